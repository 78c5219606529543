from dataclasses import fields
from pathlib import Path

import pytest

from vtdsim.driver.profiles import (
    LINUX_6_1,
    LINUX_6_12,
    MAINLINE,
    PROFILES,
    get_profile,
    profile_for_kernel,
)
from vtdsim.errors import BadInput


def test_named_profiles_differ_where_the_table_says():
    assert get_profile("linux-6.1") is LINUX_6_1
    assert set(PROFILES) == {"linux-6.1", "linux-6.12", "mainline"}
    assert (LINUX_6_1.qi_batch_size, MAINLINE.qi_batch_size) == (1, 16)
    assert (LINUX_6_1.psi_unaligned_max_mask, MAINLINE.psi_unaligned_max_mask) == (64, 52)
    assert LINUX_6_1.devtlb_flush_checks_caching_mode
    assert not MAINLINE.devtlb_flush_checks_caching_mode
    assert MAINLINE.ih_on_wire and not LINUX_6_1.ih_on_wire
    assert (LINUX_6_1.fq_size, LINUX_6_1.fq_timeout_ns) == (256, 10_000_000)


def test_unknown_names_and_switches_are_bad_input():
    with pytest.raises(BadInput, match="linux-6.1, linux-6.12, mainline"):
        get_profile("5.4")
    with pytest.raises(BadInput, match="unknown profile switch nope"):
        LINUX_6_1.with_(nope=1)
    with pytest.raises(BadInput, match="iotlb_sync_map"):
        LINUX_6_1.with_(iotlb_sync_map="sometimes")


def test_with_changes_one_switch_and_describe_lists_all():
    p = LINUX_6_1.with_(qi_batch_size=16)
    assert p.qi_batch_size == 16 and LINUX_6_1.qi_batch_size == 1
    assert "qi_batch_size" in p.describe() and "16" in p.describe()


def test_recorded_kernels_pick_their_profile():
    assert profile_for_kernel("6.1") == "linux-6.1"
    assert profile_for_kernel("6.12") == "linux-6.12"
    with pytest.raises(BadInput, match=r"no driver profile for Linux 6\.6; profiles: "
                                       r"linux-6\.1, linux-6\.12, mainline"):
        profile_for_kernel("6.6", "config.toml:1")


def test_612_is_mainline_but_for_the_later_changes():
    later = {f.name for f in fields(MAINLINE)
             if getattr(MAINLINE, f.name) != getattr(LINUX_6_12, f.name)}
    assert later == {"name", "iotlb_sync_map", "did_allocator", "cache_tag_flush_all_walk",
                     "cache_tag_insert"}


README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_switch_table() -> dict[str, list[str]]:
    rows, inside = {}, False
    for line in README.read_text().splitlines():
        if line.startswith("| switch | linux-6.1 | linux-6.12 | mainline |"):
            inside = True
        elif inside and not line.startswith("|"):
            break
        elif inside and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:4]
    return rows


def test_readme_switch_table_is_the_profiles():
    table = _readme_switch_table()
    switches = {f.name for f in fields(MAINLINE)} - {"name", "fq_size", "fq_timeout_ns"}
    assert set(table) == switches
    for switch, cells in table.items():
        values = [repr(getattr(p, switch)) for p in (LINUX_6_1, LINUX_6_12, MAINLINE)]
        assert cells == values, switch

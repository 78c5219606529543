import pytest

from vtdsim.driver.profiles import LINUX_6_1, MAINLINE, PROFILES, get_profile
from vtdsim.errors import BadInput


def test_named_profiles_differ_where_the_table_says():
    assert get_profile("linux-6.1") is LINUX_6_1 and set(PROFILES) == {"linux-6.1", "mainline"}
    assert (LINUX_6_1.qi_batch_size, MAINLINE.qi_batch_size) == (1, 16)
    assert (LINUX_6_1.psi_unaligned_max_mask, MAINLINE.psi_unaligned_max_mask) == (64, 52)
    assert LINUX_6_1.devtlb_flush_checks_caching_mode
    assert not MAINLINE.devtlb_flush_checks_caching_mode
    assert MAINLINE.ih_on_wire and not LINUX_6_1.ih_on_wire
    assert (LINUX_6_1.fq_size, LINUX_6_1.fq_timeout_ns) == (256, 10_000_000)


def test_unknown_names_and_switches_are_bad_input():
    with pytest.raises(BadInput, match="linux-6.1, mainline"):
        get_profile("5.4")
    with pytest.raises(BadInput, match="unknown profile switch nope"):
        LINUX_6_1.with_(nope=1)
    with pytest.raises(BadInput, match="iotlb_sync_map"):
        LINUX_6_1.with_(iotlb_sync_map="sometimes")


def test_with_changes_one_switch_and_describe_lists_all():
    p = LINUX_6_1.with_(qi_batch_size=16)
    assert p.qi_batch_size == 16 and LINUX_6_1.qi_batch_size == 1
    assert "qi_batch_size" in p.describe() and "16" in p.describe()

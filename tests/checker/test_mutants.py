"""The mutation vocabulary on toy step streams, the mutant catalogue against the scenarios that
should catch it, and `vtdsim mutants` (the full run is marked slow: about two minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.checker import boot
from vtdsim.checker import mutants as mt
from vtdsim.checker import mutations as mu
from vtdsim.checker.litmus import Options
from vtdsim.driver import steps as st
from vtdsim.errors import BadInput
from vtdsim.hardware.bitfield import join_qwords, split_qwords
from vtdsim.hardware.descriptors import decode, encode

LITMUS = Path(__file__).resolve().parents[2] / "litmus"
# Mutants whose expected catcher runs in about a second (CI); the rest run in the slow test.
FAST = ["iotlb_psi_dropped", "psi_ih_with_freed_tables", "entry_present_first",
        "snp_dropped_after_enforce", "fq_finish_before_flush", "mainline_psi_wrong_page",
        "vmm_pde_unmap_dropped", "vmm_dsi_as_psi", "vmm_iova_tree_skips_changed",
        "vmm_forwarded_flush_dropped"]


def _inner():
    yield st.CpuWrite(addr=0x100, value=1, why="store")
    status = yield st.CpuRead(addr=0x200, why=mu.QI_WHY)
    yield st.Clflush(addr=0x100, why="flush")
    return status


def outer():
    return (yield from _inner())


def drive(gen, replies=None):
    """Run a generator to the end: (steps, return value); reads answer ``replies`` or 0."""
    replies = replies or {}
    seen, reply = [], None
    try:
        while True:
            step = gen.send(reply)
            seen.append(step)
            reply = replies.get(type(step).__name__)
    except StopIteration as stop:
        return seen, stop.value


def test_call_stack_follows_yield_from():
    gen = outer()
    next(gen)
    assert mu.call_stack(gen) == ("outer", "_inner")


def test_drop_answers_a_dropped_status_read_as_done():
    rule = mu.Drop(mu.Match(kinds=(st.CpuRead,), within="_inner"))
    seen, value = drive(mu.Mutation(rules=(rule,)).wrap(outer()))
    assert [type(s).__name__ for s in seen] == ["CpuWrite", "Clflush"]
    assert value == 2  # QI_DONE


def test_alter_keeps_the_reply_of_the_replacement():
    rule = mu.Alter(mu.Match(kinds=(st.CpuRead,)), lambda s: st.CpuRead(addr=0x300, why=s.why))
    seen, value = drive(mu.Mutation(rules=(rule,)).wrap(outer()), {"CpuRead": 7})
    assert seen[1].addr == 0x300 and value == 7


def test_delay_until_a_later_step_and_at_the_end():
    store = mu.Match(kinds=(st.CpuWrite,))
    after_flush = mu.Delay(store, mu.Match(kinds=(st.Clflush,)))
    seen, _ = drive(mu.Mutation(rules=(after_flush,)).wrap(outer()))
    assert [type(s).__name__ for s in seen] == ["CpuRead", "Clflush", "CpuWrite"]
    at_end = mu.Delay(store, mt.NEVER)
    seen, _ = drive(mu.Mutation(rules=(at_end,)).wrap(outer()))
    assert type(seen[-1]) is st.CpuWrite


def _stores():
    for addr in (0x18, 0x10, 0x8, 0x0):
        yield st.CpuWrite(addr=addr, value=addr + 1, why="entry")
    yield st.Unlock(name="l", why="entry")


def test_reverse_run_puts_qword0_first():
    rule = mu.ReverseRun(mu.Match(kinds=(st.CpuWrite,)))
    seen, _ = drive(mu.Mutation(rules=(rule,)).wrap(_stores()))
    assert [s.addr for s in seen[:4]] == [0x0, 0x8, 0x10, 0x18]
    assert type(seen[-1]) is st.Unlock


def _submission(desc):
    yield st.CpuWrite(addr=0x1000, value=join_qwords(desc[:2]), size=16, why=mu.QI_WHY)
    yield st.Annotate(event="qi_submit", why=mu.QI_WHY)


def _words(store: st.CpuWrite) -> list[int]:
    return [*split_qwords(store.value, 2), 0, 0]


def test_descriptor_rules_drop_or_change_a_whole_descriptor():
    psi = encode("iotlb_inv", g=3, did=2, addr=0x200000, am=9)
    drop = mu.Mutation(descriptors=(mu.DescriptorRule("iotlb_inv"),))
    seen, _ = drive(drop.wrap(_submission(psi)))
    assert decode(_words(seen[0])).fields["fn"] == 1
    assert seen[0].size == 16 and type(seen[1]) is st.Annotate
    shrink = mt.alter_desc("iotlb_inv", "", mt._with(am=lambda m: m - 1))
    seen, _ = drive(shrink.wrap(_submission(psi)))
    assert decode(_words(seen[0])).fields["am"] == 8
    other = mt.drop_desc("dev_tlb_inv", "")
    seen, _ = drive(other.wrap(_submission(psi)))
    assert _words(seen[0]) == list(psi)


def test_applied_restores_the_op_factories_and_swaps():
    before = dict(boot.OP_FACTORIES)
    mutant = mt.select(["devtlb_before_iotlb"])[0]
    swap = mutant.swaps[0]
    original = getattr(swap.owner, swap.name)
    with mt.applied(mutant):
        assert getattr(swap.owner, swap.name) is swap.replacement
        assert boot.OP_FACTORIES["map"] is not before["map"]
    assert before == boot.OP_FACTORIES
    assert getattr(swap.owner, swap.name) is original


def test_catalogue_names_are_unique_and_catchers_exist():
    names = [m.name for m in mt.CATALOGUE]
    assert len(names) == len(set(names)) >= 20
    library = {sc.name for sc in mt.load_all([LITMUS])}
    assert all(set(m.catchers) <= library for m in mt.CATALOGUE)


def test_unknown_mutant_is_bad_input():
    with pytest.raises(BadInput, match="no mutant nope"):
        mt.select(["nope"])


@pytest.mark.parametrize("name", FAST)
def test_fast_mutants_are_caught_by_their_scenario(name):
    mutant = mt.select([name])[0]
    scenarios = [sc for sc in mt.load_all([LITMUS]) if sc.name in mutant.catchers]
    caught = mt.hunt(mutant, scenarios, Options())
    assert caught.by == mutant.catchers[0], caught


def test_an_unmutated_catcher_passes():
    scenarios = [sc for sc in mt.load_all([LITMUS]) if sc.name == "psc_table_free_psi"]
    assert mt.clean_run(scenarios, Options()) == []


@pytest.mark.slow
def test_cli_catches_every_mutant_after_a_clean_run():
    from vtdsim.cli.main import _register, cli

    _register()
    result = CliRunner().invoke(cli, ["mutants", str(LITMUS)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert "clean run: " in result.output and "0 unexpected" in result.output
    assert lines[-1] == f"mutants: caught {len(mt.CATALOGUE)}/{len(mt.CATALOGUE)}"


def test_cli_only_one_mutant_on_one_file():
    from vtdsim.cli.main import _register, cli

    _register()
    path = LITMUS / "unmap_free_race_flush_wait.toml"
    result = CliRunner().invoke(cli, ["mutants", str(path), "--only", "qi_wait_dropped"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == "mutants: caught 1/1"

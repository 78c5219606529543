"""Tests of the counterexample table and the herd7-style summary (report.py)."""

from toy_models import Op, ToyModel, counter, independent, stale_cache

from vtdsim.checker.explore import explore
from vtdsim.checker.report import causal_chain, counterexample_table, render, summary
from vtdsim.checker.world import Violation


def test_table_has_one_column_per_actor_and_one_row_per_step():
    cex = explore(stale_cache(), "bfs").counterexample
    lines = counterexample_table(cex).splitlines()
    header = lines[0]
    for actor in ("T0:unmap", "hw:fill", "dev:dma"):
        assert actor in header
    rows = [line for line in lines[2:-1] if line[:5].strip()]
    assert len(rows) == len(cex.records) == 5
    assert header.index("hw:fill") <= rows[1].index("fill cache")
    assert lines[-1] == "=> dma_after_free: dma reached freed page=0x5000"


def test_causal_chain_follows_the_key_steps():
    cex = explore(stale_cache(), "bfs").counterexample
    assert causal_chain(cex) == (
        "flush -> fill -> clear PTE -> free page -> DMA hits freed page -> violates dma_after_free"
    )


def _wide_model(actors: int, text: str) -> ToyModel:
    programs = {f"hw:fill entry {i}": (Op(text, writes=("x",)),) for i in range(actors)}
    programs["T0:check"] = (
        Op("x = 1 check", writes=("x",), effect=lambda s, l: s.__setitem__("bad", 1)),
    )
    return ToyModel(
        "wide",
        programs,
        {},
        ("p",),
        check=lambda s: [Violation("p", "bad")] if s.get("bad") else [],
    )


def test_long_cells_wrap_and_every_line_fits_the_width():
    model = _wide_model(5, "a rather long description of a cache fill " * 4)
    cex = explore(model, "dfs", stop_at_first=True).counterexample
    table = counterexample_table(cex, width=100)
    assert max(len(line) for line in table.splitlines()) <= 100
    assert "..." in table or "~" in table


def test_many_actors_are_grouped_by_family():
    model = _wide_model(12, "fill")
    cex = explore(model, "dfs", stop_at_first=True).counterexample
    header = counterexample_table(cex, width=120).splitlines()[0]
    assert "| hw" in header and "| T0" in header
    assert "hw:fill entry 0" not in header


def test_summary_is_herd7_like():
    result = explore(counter(), "dpor")
    text = summary(result)
    assert text.splitlines()[0] == "Test counter (dpor)"
    assert "Exhaustive" in text
    assert "Property no_lost_update: violated" in text
    assert "Observation counter.no_lost_update Sometimes" in text
    assert "Observation counter.deadlock_free Never 0" in text
    assert text.splitlines()[-1].startswith("Time counter ")


def test_summary_says_bounded_with_the_bound():
    result = explore(independent(4, 2), "dfs", max_executions=5)
    text = summary(result)
    assert "Bounded, not exhaustive: max_executions=5 reached" in text
    assert "deadlock_free: not reached within bounds" in text


def test_render_puts_counterexamples_before_the_summary():
    text = render(explore(stale_cache(), "dpor"))
    assert text.index("-> violates dma_after_free") < text.index("Test stale-cache-buggy")


def test_the_set_up_step_a_violation_depends_on_leads_the_chain():
    """The fill and the DMA read the page table the [[setup]] map wrote: it is the first link;
    a scenario without set-up ops has none."""
    from pathlib import Path

    from vtdsim.checker.litmus import Options, run_scenario
    from vtdsim.checker.scenario import load

    litmus = Path(__file__).resolve().parents[2] / "litmus"
    noflush = run_scenario(load(litmus / "unmap_free_race_noflush.toml"), Options())
    chain = causal_chain(noflush.counterexamples[0])
    assert chain.startswith("set-up map(domain=dom, iova=0x1000, page=buf) -> ")
    assert chain.count("set-up") == 1
    no_setup = run_scenario(load(litmus / "cm_map_without_sync_map.toml"), Options())
    assert "set-up" not in causal_chain(no_setup.counterexamples[0])


def test_a_torn_fill_names_the_set_up_op_whose_stores_it_read():
    """A torn fill's late read walks the page tables the [[setup]] maps wrote: like a whole
    fill, it carries that op as the chain's first link (mutant: the teardown's context-cache
    invalidation dropped, so torn_entry is violated)."""
    from pathlib import Path

    from vtdsim.checker import mutants
    from vtdsim.checker.litmus import Options, run_scenario
    from vtdsim.checker.scenario import load

    litmus = Path(__file__).resolve().parents[2] / "litmus"
    mutant = next(m for m in mutants.CATALOGUE if m.name == "teardown_cc_flush_dropped")
    with mutants.applied(mutant):
        result = run_scenario(load(litmus / "issue10_p5_torn_context_reattach.toml"), Options())
    cex = next(c for c in result.counterexamples if c.prop == "torn_entry")
    torn = [r for r in cex.records if r.text.startswith("torn-fill") and r.detail.get("setup")]
    assert torn and all(label.startswith("set-up map(") for r in torn
                        for _, label in r.detail["setup"])
    assert causal_chain(cex).startswith("set-up map(domain=dom1, iova=0x1000, page=buf) -> ")

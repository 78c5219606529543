"""Guest-controlled garbage never raises out of a remapping unit: ~20,000 seeded inputs through
scripts/fuzz_unit.py (the full 1,000,000-input run is the script itself)."""

import pytest

import script_module


@pytest.fixture(scope="module")
def fuzz_unit():
    return script_module.load("fuzz_unit")


@pytest.mark.parametrize(("seed", "qi_mode"), [(1, "sync"), (2, "async")])
def test_no_exception_escapes(fuzz_unit, seed, qi_mode):
    fuzzer = fuzz_unit.run(10_000, seed, qi_mode=qi_mode)
    stats = fuzzer.summary()
    # The inputs must reach the deep paths, or the run proves little.
    assert stats["faults_recorded"] > 0 and stats["iqe"] > 0 and stats["iqt_writes"] > 0
    assert stats["gcmd_writes"] > 0 and stats["walk_reads"] > 0
    assert fuzzer.events["mmio_write_ignored"] > 0


def test_runs_are_deterministic(fuzz_unit):
    first = fuzz_unit.run(1500, 7)
    second = fuzz_unit.run(1500, 7)
    assert first.summary() == second.summary() and first.events == second.events
    assert fuzz_unit.report(first) == fuzz_unit.report(second)


def test_main_reports_counts(fuzz_unit, capsys):
    assert fuzz_unit.main(["--iterations", "300", "--seed", "3", "--preset", "qemu72-sm"]) == 0
    out = capsys.readouterr().out
    assert "no exception escaped" in out and "faults presented=" in out

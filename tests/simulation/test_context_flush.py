"""Seed 001's timed workload (``context-flush``): iommu->lock's hold and wait times with
``context_flip_pri``'s invalidations inside or after the lock, against attach/PASID
contenders."""

import json

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import _register, cli
from vtdsim.errors import BadInput
from vtdsim.simulation import constants
from vtdsim.simulation.run import Mode, make_params, simulate

TABLE = constants.load()


def _run(ios=24, seed=0, mode=None, **params):
    return simulate("context-flush", Mode(ios=ios, seed=seed, **(mode or {})),
                    make_params("context-flush", **params), TABLE)


def _without_timing(result):
    return {k: v for k, v in result.items() if k != "timing"}


def test_same_seed_same_figures_other_seed_other_jitter():
    a, b = _run(seed=5, flush="outside"), _run(seed=5, flush="outside")
    assert json.dumps(_without_timing(a)) == json.dumps(_without_timing(b))
    assert _without_timing(a) != _without_timing(_run(seed=6, flush="outside"))


@pytest.mark.parametrize("contend", ["attach", "pasid"])
def test_hold_inside_exceeds_outside_and_grows_with_the_domains(contend):
    """Inside, the flipper holds iommu->lock for every invalidation: one per DID more of
    them with more PASIDs; outside it holds it only for the PRE write and the walk."""
    runs = {(n, f): _run(pasids=n, flush=f, contend=contend)
            for n in (0, 6) for f in ("inside", "outside")}
    for n in (0, 6):
        inside, outside = runs[n, "inside"], runs[n, "outside"]
        assert inside["flip_hold_ns_mean"] > 10 * outside["flip_hold_ns_mean"]
        assert inside["contender_wait_ns_mean"] > outside["contender_wait_ns_mean"]
        assert inside["contender_ops_per_s"] < outside["contender_ops_per_s"]
        assert inside["affected_dids"] == n + 1
    # six more DIDs: six more (PASID-cache + IOTLB) submissions, each at least a descriptor
    # pair of hardware time, inside the lock
    grown = runs[6, "inside"]["flip_hold_ns_mean"] - runs[0, "inside"]["flip_hold_ns_mean"]
    assert grown > 6 * 2 * 2 * TABLE.ns("qi_descriptor_ns")
    assert runs[6, "outside"]["flip_hold_ns_mean"] < runs[6, "inside"]["flip_hold_ns_mean"] / 10


def test_each_flip_holds_the_lock_once_inside_twice_outside():
    """Outside, Kevin Tian's walk takes iommu->lock a second time: the time held per flip is
    the sum of two sections, each shorter."""
    inside, outside = _run(flush="inside"), _run(flush="outside")
    assert inside["flip_lock_ns_per_flip"] == pytest.approx(inside["flip_hold_ns_mean"],
                                                            rel=0.1)
    assert outside["flip_lock_ns_per_flip"] == pytest.approx(
        2 * outside["flip_hold_ns_mean"], rel=0.1)


def test_contenders_wait_for_the_flip_only_when_it_holds_the_lock_long():
    inside = _run(flush="inside")
    assert inside["contender_waited_fraction"] > 0.5
    assert inside["contender_wait_ns_p99"] >= inside["flip_hold_ns_mean"] / 2
    assert inside["iommu_lock_busy_fraction"] > 0.5


@pytest.mark.parametrize("params, mode, words", [
    ({"flush": "beside"}, {}, "--flush 'beside'"),
    ({"contend": "map"}, {}, "--contend 'map'"),
    ({"pasids": -1}, {}, "--pasids -1"),
    ({"pasids": 1 << 15}, {}, "--pasids 32768"),
    ({"contenders": 0}, {}, "--contenders 0"),
    ({"gap_ns": -1.0}, {}, "--gap-ns -1.0"),
    ({"think_ns": float("nan")}, {}, "--think-ns nan"),
    ({}, {"platform": "emulated"}, "bare only"),
    ({}, {"unit": "qemu72-legacy"}, "scalable-mode unit"),
    ({}, {"profile": "linux-6.1"}, "v6.11+"),
])
def test_bad_options_are_one_line_errors(params, mode, words):
    with pytest.raises(BadInput) as err:
        _run(mode=mode, **params)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_cli_runs_and_rejects_in_one_line():
    _register()
    runner = CliRunner()
    out = runner.invoke(cli, ["simulate", "context-flush", "--ios", "6", "--pasids", "2",
                              "--flush", "outside", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["flush"] == "outside" and result["affected_dids"] == 3
    bad = runner.invoke(cli, ["simulate", "context-flush", "--ios", "6", "--contenders", "99"])
    assert bad.exit_code == 2 and "--contenders 99" in bad.output
    assert "Traceback" not in bad.output

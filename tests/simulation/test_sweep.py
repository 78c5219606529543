"""`vtdsim sweep`: the grid's points in order, on Dask distributed identical to serial."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.simulation import report, sweep

SPEC = """
workload = "nvme"
ios = 100
[fixed]
qd = 4
[grid]
policy = ["strict", "lazy"]
"constants.llc_read_ns" = [37, 400]
"""


def _spec(tmp_path, text):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def test_grid_order_and_constants_columns(tmp_path):
    points, name = sweep.load_spec(_spec(tmp_path, SPEC))
    assert name == "spec" and len(points) == 4
    assert [(p["constants.llc_read_ns"], p["policy"]) for p in points] == [
        (37, "strict"), (37, "lazy"), (400, "strict"), (400, "lazy")]
    results = sweep.run_serial(points)
    assert results[2]["constants.llc_read_ns"] == 400
    # Walk reads cost more when the LLC (server-sm snoops its walks) is slower: the
    # translation penalty follows the constant.
    assert results[2]["dma_latency_penalty_ns"] > results[0]["dma_latency_penalty_ns"]


def test_dask_local_cluster_is_identical_to_serial(tmp_path):
    pytest.importorskip("distributed")
    points, _ = sweep.load_spec(_spec(tmp_path, SPEC))
    serial = report.to_csv(sweep.run_serial(points))
    assert report.to_csv(sweep.run_dask(points, workers=2)) == serial


@pytest.mark.parametrize("text, words", [
    ('workload = "nvme"\nbogus = 1\n', "'bogus'"),
    ('workload = "disk"\n', "'workload'"),
    ('workload = "nvme"\n[grid]\npolicy = "strict"\n', "grid.policy"),
    ('workload = "nvme"\n[fixed]\nmtu = 9000\n', "'mtu'"),
])
def test_bad_spec_is_one_line(tmp_path, text, words):
    path = _spec(tmp_path, text)
    with pytest.raises(BadInput) as err:
        sweep.load_spec(path)
    assert words in str(err.value) and str(path) in str(err.value)


def test_scheduler_address_and_cli(tmp_path):
    """A running scheduler given by address (``--scheduler``), and the CLI's serial CSV file:
    the same rows."""
    distributed = pytest.importorskip("distributed")
    from click.testing import CliRunner

    from vtdsim.cli.main import _register, cli

    spec = _spec(tmp_path, SPEC)
    points, _ = sweep.load_spec(spec)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        remote = report.to_csv(sweep.run_dask(points, scheduler=cluster.scheduler_address))
    _register()
    out = CliRunner().invoke(cli, ["sweep", str(spec), "--serial", "--csv",
                                   str(tmp_path / "out.csv")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "out.csv").read_text() == remote


def test_platform_is_a_grid_column(tmp_path):
    """A grid over platforms: each row names its platform and its exits per I/O."""
    spec = _spec(tmp_path, 'workload = "nic-rx"\nios = 150\n[fixed]\nring = 64\n'
                 'rx_buffers = "map"\n'
                 'profile = "linux-6.12"\n[grid]\nplatform = ["bare", "nested"]\n')
    points, _ = sweep.load_spec(spec)
    results = sweep.run_serial(points)
    assert [r["platform"] for r in results] == ["bare", "nested"]
    assert results[0]["exits_per_io"] == 0 and results[1]["exits_per_io"] == 1.0
    header, bare, nested = report.to_csv(results).splitlines()
    column = header.split(",").index("platform")
    assert bare.split(",")[column] == "bare" and nested.split(",")[column] == "nested"

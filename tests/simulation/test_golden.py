"""Pinned `vtdsim simulate --json` outputs: the engine's speed work (issue 12) must leave
every figure byte-identical, so a run per workload, policy and platform is compared with the
JSON the engine printed before (timing apart).  A change that is *meant* to move a figure
(a new mechanism, a constant) regenerates them: ``VTDSIM_REGEN_GOLDEN=1 pytest
tests/simulation/test_golden.py`` and the diff of ``golden/`` is reviewed with the change."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from vtdsim.cli.main import _register, cli

GOLDEN = Path(__file__).parent / "golden"
EXAMPLE = Path(__file__).parents[2] / "examples" / "legacy-cm-default"

CASES = {
    "nic-rx-strict": ["nic-rx", "--ios", "1500"],
    "nic-rx-strict-duration": ["nic-rx", "--duration", "300us", "--seed", "5"],
    "nic-rx-lazy-2flows": ["nic-rx", "--policy", "lazy", "--flows", "2", "--ios", "1500"],
    "nic-rx-strict-2flows-61": ["nic-rx", "--flows", "2", "--profile", "linux-6.1",
                                "--ring", "64", "--ios", "800"],
    "nic-rx-mlx5-ats": ["nic-rx", "--pages-per-desc", "4", "--ats", "--ring", "64",
                        "--ios", "600"],
    "nic-rx-2m": ["nic-rx", "--iova-pages", "2m", "--rx-buffers", "map", "--ios", "800"],
    "nic-rx-off": ["nic-rx", "--policy", "off", "--ios", "500"],
    "nic-rx-passthrough": ["nic-rx", "--policy", "passthrough", "--ios", "500"],
    "nic-tx-strict": ["nic-tx", "--ios", "800", "--ring", "64"],
    "nvme-strict": ["nvme", "--ios", "600", "--jobs", "2", "--qd", "8"],
    "nvme-lazy-write": ["nvme", "--policy", "lazy", "--rw", "write", "--ios", "600"],
    "dma-window": ["dma-window", "--ios", "3000", "--window", "33554432"],
    "dma-window-2m": ["dma-window", "--ios", "1000", "--iova-pages", "2m"],
    "nic-rx-emulated": ["nic-rx", "--platform", "emulated", "--ring", "64", "--ios", "300"],
    "nic-rx-shadow": ["nic-rx", "--platform", "shadow", "--ring", "64", "--ios", "300"],
    "nic-rx-nested-lazy": ["nic-rx", "--platform", "nested", "--policy", "lazy",
                           "--profile", "linux-6.12", "--ring", "64",
                           "--ios", "400"],
    "nvme-nested-sidecore": ["nvme", "--platform", "nested", "--exits", "sidecore",
                             "--ios", "300", "--qd", "8"],
    "trace-example-strict": ["trace", str(EXAMPLE), "--policy", "strict"],
}


def _output(args: list[str]) -> str:
    _register()
    out = CliRunner().invoke(cli, ["simulate", *args, "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    result.pop("timing")
    return json.dumps(result, sort_keys=True, indent=1) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_simulate_json_is_pinned(name):
    path = GOLDEN / f"{name}.json"
    got = _output(CASES[name])
    if os.environ.get("VTDSIM_REGEN_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text()

"""The litmus scenario format: TOML and the Python API build the same Scenario; bad files give
one-line errors with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from vtdsim.checker.scenario import Scenario, load, op, parse
from vtdsim.errors import BadInput

LITMUS = Path(__file__).resolve().parents[2] / "litmus"


def test_toml_and_python_api_build_the_same_scenario():
    from_file = load(LITMUS / "unmap_free_race_noflush.toml")
    built = (
        Scenario("unmap_free_race_noflush", preset="qemu72-legacy", profile="linux-6.1",
                 policy="strict", doc=from_file.doc, path=from_file.path)
        .device("dev1", 0x10)
        .domain("dom", devices=("dev1",), pages=("buf",))
        .setup(op("map", domain="dom", iova=0x1000, page="buf"))
        .thread("T0", op("unmap", domain="dom", iova=0x1000, sync=False),
                op("free", page="buf"))
        .fill("dev1", 0x1000)
        .dma_actor("dev1", 0x1000)
        .expecting(dma_after_free="violated", stale_after_strict_unmap="holds",
                   spurious_fault="holds", deadlock_free="holds")
    )
    strip = lambda sc: [[(o.kind, o.args, o.skip) for o in ops]  # noqa: E731
                        for ops in (sc.setup_ops, *sc.threads.values())]
    assert strip(built) == strip(from_file)
    assert (built.devices, built.domains, built.fills, built.dma, built.expect) == (
        from_file.devices, from_file.domains, from_file.fills, from_file.dma, from_file.expect)
    assert built.iovas() == [0x1000]


def test_sid_accepts_lspci_notation():
    assert load(LITMUS / "unmap_free_race_noflush.toml").devices[0].sid == 0x10


@pytest.mark.parametrize("text, message, line", [
    ('name = "x"\n[[thread]]\nname = "T0"\nops = [{op = "teleport"}]\n', "unknown op", 4),
    ('name = "x"\n[[thread]]\nname = "T0"\nops = [{op = "free", page = "nope"}]\n',
     "unknown page 'nope'", 4),
    ('name = "x"\nbogus = 1\n', "unknown key 'bogus'", 2),
    ('name = "x"\n[[thread]]\nname = "T0"\nops = [{op = "wbinvd"}]\n[expect]\n'
     'dma_after_free = "maybe"\n', "expected 'holds' or 'violated'", 6),
    ('name = "x"\n[[thread\n', "TOML", 2),
])
def test_bad_files_report_file_and_line(text, message, line):
    with pytest.raises(BadInput) as err:
        parse(text, "bad.toml")
    assert message in str(err.value)
    if line:
        assert str(err.value).startswith(f"bad.toml:{line}:")
    assert "\n" not in str(err.value)


def test_op_checks_fields():
    with pytest.raises(BadInput, match="iova: required key missing"):
        op("unmap", domain="dom")
    with pytest.raises(BadInput, match="unknown key .colour."):
        op("free", page="buf", colour="red")
    assert op("unmap", domain="d", iova=0x1000).args["sync"] is True


def test_context_flip_pri_op_changes_a_present_context_entry(tmp_path):
    """Seed 001's present -> present scalable-mode context change runs as a scenario op and
    issues the context-cache flush (the PASID-walk variants live in the litmus library)."""
    from vtdsim.checker.boot import OP_FACTORIES, boot
    from vtdsim.checker.litmus import Options, run_paths
    from vtdsim.checker.scenario import load

    path = tmp_path / "flip.toml"
    path.write_text(FLIP_PRI)
    lines: list[str] = []
    assert run_paths([path], Options(), lines.append) == (2, 0)
    scenario = load(path)
    system = boot(scenario)
    before = system.platform.units[0].stats["desc:cc_inv"]
    system.executor.run(OP_FACTORIES["context_flip_pri"](system, scenario.threads["T0"][0]))
    assert system.platform.units[0].stats["desc:cc_inv"] == before + 1


FLIP_PRI = """
name = "flip_pri_smoke"
preset = "server-sm"
profile = "mainline"
policy = "strict"
[[device]]
name = "dev1"
sid = "00:02.0"
[[domain]]
name = "dom"
type = "unmanaged"
stage = "ss"
devices = ["dev1"]
pages = ["buf"]
[[thread]]
name = "T0"
ops = [{op = "context_flip_pri", device = "dev1"}]
[expect]
torn_entry = "holds"
deadlock_free = "holds"
"""


@pytest.mark.parametrize(("name", "line"), [
    ("unknown_device_key", 10),  # the unknown key's own line
    ("device_no_sid", 6),  # a missing key: its table's header
    ("iova_string", 22),  # inside an inline table of an inline array
    ("fill_no_iova", 25),  # the inline table that lacks it
    ("unknown_gate_thread", 22),  # a table of a thread's `after`
    ("dup_sid", 13),  # the second declaration
    ("unknown_dma_key", 31),  # an array of tables after others
])
def test_errors_point_at_the_line(name, line):
    path = Path(__file__).resolve().parents[1] / "inputs" / "bad" / "scenarios" / f"{name}.toml"
    with pytest.raises(BadInput) as err:
        load(path)
    assert str(err.value).startswith(f"{path}:{line}: ")

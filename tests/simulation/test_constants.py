"""The constants table: every entry sourced, overrides checked, bad files one-line errors."""

import pytest

from vtdsim.errors import BadInput
from vtdsim.simulation import constants


def test_every_constant_has_value_unit_source_confidence():
    table = constants.load()
    rows = table.rows()
    assert len(rows) >= 20
    for c in rows:
        assert c.unit and c.source and c.confidence in constants.CONFIDENCES


def test_cycles_convert_through_cpu_ghz(tmp_path):
    table = constants.load()
    assert table.ns("lock_cycles") == pytest.approx(table["lock_cycles"] / table["cpu_ghz"])
    path = tmp_path / "c.toml"
    path.write_text("cpu_ghz = 2.0\n[dram_read_ns]\nvalue = 120\nsource = 'measured'\n"
                    "confidence = 'P'\n")
    over = constants.load(path)
    assert over.ns("lock_cycles") == pytest.approx(over["lock_cycles"] / 2.0)
    assert over["dram_read_ns"] == 120 and over.table["dram_read_ns"].confidence == "P"
    assert table["dram_read_ns"] != 120  # the built-in table is untouched


@pytest.mark.parametrize("text, words", [
    ("no_such = 1\n", "no such constant"),
    ("cpu_ghz = 'fast'\n", "must be a number"),
    ("dram_read_ns = -1\n", "must not be negative"),
    ("[dram_read_ns]\nvalue = 1\nunit = 'cycles'\n", "unit"),
    ("[dram_read_ns]\nunit = 'ns'\n", "needs a 'value'"),
    ("cpu_ghz = 0\n", "positive"),
    ("= broken\n", "not TOML"),
])
def test_bad_override_is_one_line_naming_file(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BadInput) as err:
        constants.load(path)
    message = str(err.value)
    assert words in message and str(path) in message and "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="cannot read"):
        constants.load(tmp_path / "absent.toml")

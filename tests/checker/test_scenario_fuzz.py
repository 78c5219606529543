"""Generated TOML fed to the scenario loader: the only outcomes are a valid ``Scenario`` or one
``BadInput`` line - never another exception, never a multi-line message."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toml_text import toml_value

from vtdsim.checker.scenario import Scenario, parse
from vtdsim.errors import BadInput

BASE = (Path(__file__).resolve().parents[1] / "inputs" / "bad" / "base_scenario.toml").read_text()
KEYS = ["name", "doc", "preset", "profile", "policy", "switches", "device", "domain", "setup",
        "thread", "hardware", "dma", "expect", "op", "iova", "size", "page", "sid", "ats",
        "pasid", "times", "caches", "access", "qi", "fills", "ops", "after", "lock", "nth",
        "skip", "devices", "pages", "stage", "type", "dma_after_free", "bogus"]
WORDS = ["dev1", "dom", "buf", "T0", "map", "unmap", "free", "iotlb", "server-sm", "holds",
         "violated", "00:02.0", "qi_wait", "fs", "ss", "read", "x", ""]

scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70), st.booleans(),
    st.sampled_from(WORDS),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"),
            max_size=8),
    st.floats(allow_nan=True, allow_infinity=True),
)


values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=8,
)


def _line(key: str, value) -> str:
    return f"{key} = {toml_value(value)}\n"


@st.composite
def documents(draw) -> str:
    """The valid base with lines replaced, removed or added, or a document from scratch."""
    if draw(st.integers(0, 3)):
        lines = BASE.splitlines(keepends=True)
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(lines) - 1))
            action = draw(st.sampled_from(["replace", "drop", "insert"]))
            new = _line(draw(st.sampled_from(KEYS)), draw(values))
            if action == "drop":
                del lines[at]
            elif action == "replace" and "=" in lines[at]:
                key = lines[at].split("=", 1)[0].strip()
                lines[at] = _line(key, draw(values))
            else:
                lines.insert(at, new)
        return "".join(lines)
    tables = draw(st.lists(st.sampled_from(["[[thread]]", "[[device]]", "[hardware]",
                                            "[expect]", "[[domain]]", "[[dma]]"]), max_size=3))
    text = "".join(_line(draw(st.sampled_from(KEYS)), draw(values)) for _ in range(3))
    for header in tables:
        text += header + "\n" + "".join(_line(draw(st.sampled_from(KEYS)), draw(values))
                                          for _ in range(2))
    return text


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_toml_is_a_scenario_or_one_bad_input_line(text):
    try:
        sc = parse(text, "gen.toml")
    except BadInput as err:
        message = str(err)
        assert message.startswith("gen.toml") and "\n" not in message
        return
    assert isinstance(sc, Scenario) and sc.threads
    assert sc.validate() is sc  # the Python API's check agrees with the file's

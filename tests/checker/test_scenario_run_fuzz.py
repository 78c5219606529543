"""Generated scenarios that the schema accepts must run: boot, a few executions, verdicts -
or stop with a one-line BadInput / SpecRuleBroken (a rule the scenario makes the driver
break), never another exception.  Ops are drawn from ``OP_MODELS`` with fields of the right
type, so every op the schema declares is exercised."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from toml_text import toml_value

from vtdsim.checker.litmus import Options, run_scenario
from vtdsim.checker.scenario import parse
from vtdsim.checker.scenario_ops import OP_MODELS
from vtdsim.errors import BadInput, SpecRuleBroken

VALUES = {
    "domain": st.just("dom"), "device": st.just("dev1"), "page": st.sampled_from(["a", "b"]),
    "iova": st.sampled_from([0x1000, 0x2000]), "size": st.just(0x1000),
    "pasid": st.just(1), "prot": st.sampled_from(["r", "w", "rw"]), "sync": st.booleans(),
    "cpu": st.sampled_from([0, 1]), "part": st.sampled_from(["all", "prepare", "program"]),
    "old": st.just(""), "enable": st.booleans(), "offset": st.sampled_from([0, 8]),
    "value": st.sampled_from([0, 0xD0D0]), "skip": st.sampled_from([[], ["qi_wait"]]),
}


@st.composite
def an_op(draw) -> dict:
    kind = draw(st.sampled_from(sorted(OP_MODELS)))
    fields = {"op": kind}
    for name, info in OP_MODELS[kind].model_fields.items():
        if name != "op" and (info.is_required() or draw(st.booleans())):
            fields[name] = draw(VALUES[name])
    return fields


@st.composite
def scenarios(draw) -> str:
    data = {
        "name": "gen",
        "preset": draw(st.sampled_from(["qemu72-legacy", "qemu72-legacy-cm-ats", "server-sm"])),
        "profile": draw(st.sampled_from(["linux-6.1", "mainline"])),
        "policy": draw(st.sampled_from(["strict", "lazy"])),
        "device": [{"name": "dev1", "sid": 0x10, "ats": draw(st.booleans()),
                    "pasid": draw(st.booleans())}],
        "domain": [{"name": "dom", "type": draw(st.sampled_from(["dma", "dma_fq", "unmanaged"])),
                    "devices": ["dev1"], "pages": ["a", "b"]}],
        "setup": draw(st.lists(an_op(), max_size=2)),
        "thread": [{"name": f"T{i}", "ops": draw(st.lists(an_op(), min_size=1, max_size=2))}
                   for i in range(draw(st.integers(1, 2)))],
        "hardware": {"qi": draw(st.sampled_from(["async", "sync"])),
                     "fills": [{"device": "dev1", "iova": 0x1000}] if draw(st.booleans()) else []},
        "dma": [{"device": "dev1", "iova": draw(st.sampled_from([0x1000, 0x2000])),
                 "access": draw(st.sampled_from(["read", "write"]))}],
    }
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in data.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_an_accepted_scenario_runs_or_stops_with_one_line(text):
    try:
        sc = parse(text, "gen.toml")
    except BadInput:
        return
    try:
        outcome = run_scenario(sc, Options(max_executions=4))
    except (BadInput, SpecRuleBroken) as err:
        assert "\n" not in str(err)
        return
    assert outcome.result.executions >= 1


@pytest.mark.parametrize("profile", ["linux-6.1", "mainline"])
@pytest.mark.parametrize("ops", [("release", "release"), ("attach_blocking", "attach_blocking"),
                                 ("detach", "release")])
def test_two_threads_moving_one_device_are_serialized_by_the_group_mutex(profile, ops):
    """Found by the fuzz above: two threads releasing one device raised ValueError in
    ``domain_remove_device``.  Linux moves a device under its group->mutex, so the second op
    sees the device already gone; every interleaving the checker explores must run."""
    text = (f'name = "two"\npreset = "qemu72-legacy"\nprofile = "{profile}"\n'
            'policy = "strict"\n'
            'device = [{name = "dev1", sid = 0x10}]\n'
            'domain = [{name = "dom", type = "dma", devices = ["dev1"], pages = ["a"]}]\n'
            f'thread = [{{name = "T0", ops = [{{op = "{ops[0]}", device = "dev1"}}]}},\n'
            f'          {{name = "T1", ops = [{{op = "{ops[1]}", device = "dev1"}}]}}]\n')
    outcome = run_scenario(parse(text, "two.toml"), Options(max_executions=200))
    assert outcome.result.executions >= 2

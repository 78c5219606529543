"""Records built through ``records.record``'s slot-storing ``__init__`` are the dataclass values
they would be with the generated one: fields, defaults, order, equality, hashing, pickling,
immutability - for every driver step and every hardware record that uses it."""

import dataclasses
import inspect
import pickle

import pytest

from vtdsim.driver import steps as st
from vtdsim.hardware import faults as hw_faults
from vtdsim.hardware import first_stage, request, second_stage
from vtdsim.hardware.caches import context_cache, iotlb, paging_structure_cache, pasid_cache
from vtdsim.hardware.translation import outcome
from vtdsim.records import record

STEP_CLASSES = [c for c in vars(st).values()
                if isinstance(c, type) and issubclass(c, st.Step)]
HARDWARE_RECORDS = [
    outcome.Fill, second_stage.SsRules, second_stage.SsTable, second_stage.SsWalk,
    first_stage.FsRules, first_stage.FsTable, first_stage.FsWalk,
    context_cache.ContextCacheEntry, paging_structure_cache.PscEntry,
    pasid_cache.PasidCacheEntry, iotlb.IotlbEntry, request.DmaRequest, hw_faults.Fault,
]


def _sample(f: dataclasses.Field, i: int):
    if isinstance(f.default, str):
        return f"{f.name}{i}"
    return (i, f.name) if isinstance(f.default, tuple) else 1000 + i


@pytest.mark.parametrize("cls", STEP_CLASSES + HARDWARE_RECORDS, ids=lambda c: c.__name__)
def test_fast_init_builds_the_dataclass_value(cls):
    fields = dataclasses.fields(cls)
    params = inspect.signature(cls).parameters
    empty = inspect.Parameter.empty
    assert [(p.name, p.default) for p in params.values()] == [
        (f.name, empty if f.default is dataclasses.MISSING else f.default) for f in fields]
    values = {f.name: _sample(f, i) for i, f in enumerate(fields)}
    by_name, by_position = cls(**values), cls(*values.values())
    assert by_name == by_position and hash(by_name) == hash(by_position)
    assert {f.name: getattr(by_name, f.name) for f in fields} == values
    required = {f.name: values[f.name] for f in fields if f.default is dataclasses.MISSING}
    defaulted = cls(**required)
    assert all(getattr(defaulted, f.name) == f.default for f in fields if f.name not in required)
    assert pickle.loads(pickle.dumps(by_name)) == by_name
    assert dataclasses.replace(by_name) == by_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_name, fields[0].name, values[fields[0].name])
    # The generated code is filed as the dataclass's own (the continuation recorder's rule).
    assert cls.__init__.__code__.co_filename == "<string>"
    if required:  # a missing required argument is refused as the dataclass's own would be
        with pytest.raises(TypeError):
            cls()


def test_every_step_class_is_covered():
    assert len(STEP_CLASSES) == 18


def test_record_refuses_what_it_does_not_build():
    with pytest.raises(TypeError, match="only plain fields"):
        @record
        class Listed:
            items: list = dataclasses.field(default_factory=list)
    with pytest.raises(TypeError, match="__post_init__"):
        @record
        class Checked:
            x: int = 0

            def __post_init__(self):
                pass

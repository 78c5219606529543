"""Steps built through ``steps.step``'s slot-storing ``__init__`` are the dataclass values
they would be with the generated one: fields, defaults, order, equality, hashing, pickling,
immutability."""

import dataclasses
import inspect
import pickle

import pytest

from vtdsim.driver import steps as st

STEP_CLASSES = [c for c in vars(st).values()
                if isinstance(c, type) and issubclass(c, st.Step)]


def _sample(f: dataclasses.Field, i: int):
    return f"{f.name}{i}" if isinstance(f.default, str) else (
        (i, f.name) if isinstance(f.default, tuple) else 1000 + i)


@pytest.mark.parametrize("cls", STEP_CLASSES, ids=lambda c: c.__name__)
def test_fast_init_builds_the_dataclass_value(cls):
    fields = dataclasses.fields(cls)
    params = inspect.signature(cls).parameters
    assert [(p.name, p.default) for p in params.values()] == [(f.name, f.default)
                                                              for f in fields]
    values = {f.name: _sample(f, i) for i, f in enumerate(fields)}
    by_name, by_position = cls(**values), cls(*values.values())
    assert by_name == by_position and hash(by_name) == hash(by_position)
    assert {f.name: getattr(by_name, f.name) for f in fields} == values
    assert all(getattr(cls(), f.name) == f.default for f in fields)
    assert pickle.loads(pickle.dumps(by_name)) == by_name
    assert dataclasses.replace(by_name) == by_name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(by_name, fields[0].name, values[fields[0].name])
    # The generated code is filed as the dataclass's own (the continuation recorder's rule).
    assert cls.__init__.__code__.co_filename == "<string>"


def test_every_step_class_is_covered():
    assert len(STEP_CLASSES) == 18

"""Reading user files through a declared schema: TOML/JSON text to data, data through a
pydantic model, and every failure as one ``BadInput`` line ``file:line: key.path: message``.

tomllib keeps no positions, so ``locate`` finds a key path's line by scanning the text
(tables, arrays of tables, inline tables and arrays); when it cannot, the message names the
key path alone.  Not provided: several errors per file (the first one is reported).
"""

from __future__ import annotations

import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vtdsim.errors import BadInput

TOML_TYPES = {bool: "a boolean", int: "an integer", str: "a string", float: "a float",
              list: "an array", dict: "a table"}


def read_text(path: str | Path, what: str) -> str:
    """A user file's text: BadInput when it cannot be read or is not UTF-8."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise BadInput(f"cannot read {what}: {err.strerror or err}", str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise BadInput(f"not UTF-8 text (byte {raw[err.start]:#04x} at offset {err.start})",
                       f"{path}:{line}") from None


def parse_toml(text: str, where: str) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = re.search(r"line (\d+)", str(err))
        raise BadInput(f"TOML: {err}", f"{where}:{line.group(1)}" if line else where) from None
    except RecursionError:
        raise BadInput("TOML: values nested too deeply", where) from None


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise BadInput(f"JSON: {err.msg} (column {err.colno})", f"{where}:{err.lineno}") from None
    except RecursionError:
        raise BadInput("JSON: values nested too deeply", where) from None


def validate(model: type[BaseModel], data: Any, where: str, text: str | None = None,
             context: dict | None = None):
    """``model`` validated from ``data``; the first error as one BadInput line."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as err:
        raise error_line(err, model, data, where, text) from None
    except RecursionError:
        raise BadInput("values nested too deeply", where) from None


def error_line(err: ValidationError, model: type[BaseModel], data: Any, where: str,
               text: str | None) -> BadInput:
    errors = err.errors(include_url=False)
    # A misspelt key usually also leaves a required one missing: name the misspelling.
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = tuple(first["loc"])
    problem = (first.get("ctx") or {}).get("error")
    if getattr(problem, "loc", None) is not None:
        loc = loc + tuple(problem.loc)
    loc = _without_tags(loc, data)
    message = _message(first, loc, model, data)
    line = locate(text, loc) if text is not None else 0
    path = key_path(loc[:-1] if first["type"] == "extra_forbidden" else loc)
    place = f"{where}:{line}" if line else where
    return BadInput(f"{path}: {message}" if path else message, place)


def key_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _without_tags(loc: tuple, data: Any) -> tuple:
    """pydantic puts a tagged union's tag (``op = "map"`` -> ``map``) in the location."""
    kept, node = [], data
    for part in loc:
        tag = isinstance(node, dict) and part not in node and node.get("op") == part
        if isinstance(part, str) and (tag or not isinstance(node, dict | list)):
            continue  # a union member's name (``op`` tag, ``bool`` of ``bool | str``)
        kept.append(part)
        node = _child(node, part)
    return tuple(kept)


def _child(node: Any, part: Any) -> Any:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _message(error: dict, loc: tuple, model: type[BaseModel], data: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return f"unknown key {loc[-1]!r}" + _keys_hint(model, data, loc[:-1])
    if kind == "missing":
        return "required key missing"
    if kind == "union_tag_invalid":
        return f"unknown op {value.get('op')!r}; ops: {error['ctx']['expected_tags']}"
    if kind == "union_tag_not_found":
        return "lacks its 'op'"
    if kind.endswith("_type") and kind not in ("literal_error",):
        wanted = {"int_type": "an integer", "string_type": "a string", "bool_type":
                  "a boolean", "list_type": "an array", "dict_type": "a table", "model_type":
                  "a table", "float_type": "a number"}.get(kind)
        if wanted:
            return f"expected {wanted}, got {_shown(value)}"
    if kind == "literal_error":
        return f"expected {error['ctx']['expected']}, got {_shown(value)}"
    if kind == "value_error":
        return str(error["ctx"]["error"])
    msg = error['msg'].replace('Input should', 'should').replace('String should', 'should')
    return f"{msg} (got {_shown(value)})"


def _shown(value: Any) -> str:
    kind = TOML_TYPES.get(type(value), type(value).__name__)
    if isinstance(value, dict | list):
        return kind
    text = repr(value) if not isinstance(value, int) or isinstance(value, bool) \
        else f"{value:#x}" if abs(value) > 255 else str(value)
    return f"{kind} {text if len(text) < 60 else text[:57] + '...'}"


def _keys_hint(model: type[BaseModel], data: Any, loc: tuple) -> str:
    """``; keys: ...`` of the table at ``loc`` (for a tagged union: the member its tag names)."""
    table, annotation, node = model, None, data
    for part in loc:
        if isinstance(part, str):
            if annotation is not None:  # resolved now that ``node`` is the table itself
                table = _table_model(annotation, node)
            field = table.model_fields.get(part) if table is not None else None
            if field is None:
                return ""
            annotation = field.annotation
        node = _child(node, part)
    if annotation is not None:
        table = _table_model(annotation, node)
    return "; keys: " + ", ".join(table.model_fields) if table is not None else ""


def _table_model(annotation, node: Any) -> type[BaseModel] | None:
    """The model a table of this annotation is read with: the only one, or the union member
    whose ``Literal`` tag field has the table's value (``op = "map"`` -> ``Map``)."""
    found, todo = [], [annotation]
    while todo:
        t = todo.pop()
        if isinstance(t, type) and issubclass(t, BaseModel):
            found.append(t)
        todo += list(typing.get_args(t))
    if len(found) > 1 and isinstance(node, dict):
        tagged = [m for m in found if any(
            typing.get_origin(f.annotation) is typing.Literal and node.get(name)
            in typing.get_args(f.annotation) for name, f in m.model_fields.items())]
        found = tagged or found
    return found[0] if found else None


# -- where a key path is in TOML text -----------------------------------------------------------
def locate(text: str | None, loc: tuple) -> int:
    """The 1-based line of ``loc`` in ``text`` (0 when not found)."""
    if not text or not loc:
        return 0
    try:
        pos = _Scanner(text).find(loc)
    except (ValueError, IndexError):
        return 0
    return text.count("\n", 0, pos) + 1 if pos is not None else 0


class _Scanner:
    HEADER = re.compile(r"(?m)^[ \t]*(\[\[?)[ \t]*([A-Za-z0-9_.\-\"' ]+?)[ \t]*\]\]?")

    def __init__(self, text: str):
        self.text = text
        self.headers = [(m.start(), m.group(1) == "[[", m.group(2).replace(" ", ""))
                        for m in self.HEADER.finditer(text) if not _in_string(text, m.start())]

    def find(self, loc: tuple) -> int | None:
        start, end, rest = self._section(loc)
        pos = start
        for part in rest:
            found = self._key(part, pos, end) if isinstance(part, str) else \
                self._element(part, pos, end)
            if found is None:
                return pos if pos else None
            pos, end = found
        return pos

    def _section(self, loc: tuple) -> tuple[int, int, tuple]:
        """The char range of the longest header matching a prefix of ``loc``."""
        best = (0, self.headers[0][0] if self.headers else len(self.text), loc)
        for depth in range(1, len(loc) + 1):
            if not isinstance(loc[depth - 1], str):
                continue  # an index: handled with the key before it
            name = ".".join(p for p in loc[:depth] if isinstance(p, str))
            index = loc[depth] if depth < len(loc) and isinstance(loc[depth], int) else None
            matches = [k for k, (_, arr, n) in enumerate(self.headers) if n == name]
            if not matches:
                continue
            k = matches[index] if index is not None and index < len(matches) else matches[0]
            if index is not None and (index >= len(matches) or not self.headers[k][1]):
                continue
            start = self.headers[k][0]
            end = self.headers[k + 1][0] if k + 1 < len(self.headers) else len(self.text)
            best = (start, end, loc[depth + (index is not None):])
        return best

    def _key(self, key: str, start: int, end: int) -> tuple[int, int] | None:
        pattern = re.compile(rf"(?<![\w.\-\"']){re.escape(key)}\s*=")
        for m in pattern.finditer(self.text, start, end):
            if not _in_string(self.text, m.start()):
                return m.start(), _value_end(self.text, m.end(), end)
        return None

    def _element(self, index: int, start: int, end: int) -> tuple[int, int] | None:
        open_at = self.text.find("[", start, end)
        if open_at < 0:
            return None
        pos, count = open_at + 1, -1
        while pos < end:
            ch = self.text[pos]
            if ch in " \t\r\n,":
                pos += 1
            elif ch == "#":
                pos = self.text.find("\n", pos, end) if "\n" in self.text[pos:end] else end
            elif ch == "]":
                return None
            else:
                count += 1
                after = _skip_value(self.text, pos, end)
                if count == index:
                    return pos, after
                pos = after
        return None


def _value_end(text: str, pos: int, end: int) -> int:
    while pos < end and text[pos] in " \t":
        pos += 1
    return _skip_value(text, pos, end) if pos < end else end


def _skip_value(text: str, pos: int, end: int) -> int:
    """Past one TOML value starting at ``pos`` (strings, nested brackets and braces)."""
    depth, quote = 0, None
    while pos < end:
        ch = text[pos]
        if quote:
            if ch == "\\" and quote == '"':
                pos += 1
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            if depth == 0:
                return pos
            depth -= 1
            if depth == 0:
                return pos + 1
        elif ch in ",\n" and depth == 0:
            return pos
        pos += 1
    return pos


def _in_string(text: str, pos: int) -> bool:
    line_start = text.rfind("\n", 0, pos) + 1
    before = text[line_start:pos]
    return before.count('"') % 2 == 1 or before.count("'") % 2 == 1 or "#" in before

"""Reading trace text: open plain, ``.xz`` or ``.gz`` files as a stream of numbered lines, and
match lines against the printf formats Linux and QEMU print them with.

Compression is recognised from the file's magic bytes, so a renamed file still opens.  Lines
are decoded as UTF-8 with replacement characters: a task name with stray bytes must not stop a
replay.

Not handled: zstd or bzip2 files, and printf conversions other than ``d i u x X s c`` with
their flags, widths and length modifiers (``%016llx``, ``%zu``, ``%ld``).
"""

from __future__ import annotations

import gzip
import lzma
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from vtdsim.errors import BadInput

_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b"
COMPRESSED_SUFFIXES = ("", ".xz", ".gz")
_BLOCK_CHARS = 1 << 20


def open_text(path: str | Path) -> TextIO:
    """Open ``path`` for reading text, decompressing xz or gzip transparently."""
    path = Path(path)
    try:
        with path.open("rb") as raw:
            magic = raw.read(len(_XZ_MAGIC))
    except OSError as exc:
        raise BadInput(f"cannot open: {exc.strerror}", where=str(path)) from None
    if magic.startswith(_XZ_MAGIC):
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    if magic.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number from 1, line without its newline)``; constant memory.

    Reads blocks and splits them, which is about twice as fast as iterating the text stream
    line by line; universal-newline decoding has already turned ``\r\n`` into ``\n``."""
    lineno = 0
    try:
        with open_text(path) as stream:
            tail = ""
            while block := stream.read(_BLOCK_CHARS):
                lines = (tail + block).split("\n")
                tail = lines.pop()
                first = lineno + 1
                lineno += len(lines)
                yield from zip(range(first, lineno + 1), lines, strict=True)
            if tail:
                lineno += 1
                yield lineno, tail
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, OSError) as exc:
        # A truncated or corrupt archive: report where the readable text stopped.
        raise BadInput(f"cannot read past this line: {exc}", where=f"{path}:{lineno}") from None


def find_variant(directory: Path, stem: str) -> Path:
    """``directory/stem``, or its ``.xz`` / ``.gz`` variant, whichever exists."""
    for suffix in COMPRESSED_SUFFIXES:
        candidate = directory / (stem + suffix)
        if candidate.is_file():
            return candidate
    raise BadInput(f"missing file (also looked for {stem}.xz and {stem}.gz)",
                   where=str(directory / stem))


def clip(text: str, limit: int = 100) -> str:
    """``text`` shortened for a one-line error message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- printf formats -------------------------------------------------------------------------

_CONVERSION = re.compile(r"%([-+ #0]*\d*(?:hh|h|ll|l|z|j|t)?)([diuxXsc%])")
_PATTERNS = {
    "d": r"(-?\d+)", "i": r"(-?\d+)", "u": r"(\d+)",
    "x": r"([0-9a-f]+)", "X": r"([0-9A-F]+)",
    # %s is lazy so that "%s/%s" and "%s %s[%d]" split at the first separator, as the names
    # printed there (iommu names, driver names) contain none.
    "s": r"(.*?)", "c": r"(.)",
}


def _hex(text: str) -> int:
    return int(text, 16)


def _digits(word: str, prefix: str, alphabet: str) -> str:
    """The digits after ``prefix``: at least one, and only from ``alphabet`` (``int`` alone
    would also take a second ``0x``, underscores, signs or non-ASCII digits, which printf
    never prints); ValueError otherwise."""
    digits = word[len(prefix):]
    if not word.startswith(prefix) or not digits or digits.strip(alphabet):
        raise ValueError(word)
    return digits


def hex_word(word: str, prefix: str = "0x") -> int:
    """``prefix`` then lower-case hex digits, as ``%x``/``%llx`` print them."""
    return int(_digits(word, prefix, "0123456789abcdef"), 16)


def dec_word(word: str, prefix: str = "") -> int:
    """``prefix`` then decimal digits, as ``%d``/``%u``/``%zu`` print a non-negative value."""
    return int(_digits(word, prefix, "0123456789"))


_CONVERTERS: dict[str, Callable[[str], object]] = {
    "d": int, "i": int, "u": int, "x": _hex, "X": _hex, "s": str, "c": str,
}


class PrintfFormat:
    """A C printf format turned into a matcher returning the printed values, converted.

    ``PrintfFormat("addr 0x%llx size %d").parse("addr 0x10 size 4") == (16, 4)``; ``None``
    when the text does not have the format's shape.
    """

    def __init__(self, fmt: str):
        self.fmt = fmt
        pattern: list[str] = []
        converters: list[Callable[[str], object]] = []
        pos = 0
        for match in _CONVERSION.finditer(fmt):
            pattern.append(re.escape(fmt[pos : match.start()]))
            conversion = match.group(2)
            if conversion == "%":
                pattern.append("%")
            else:
                pattern.append(_PATTERNS[conversion])
                converters.append(_CONVERTERS[conversion])
            pos = match.end()
        pattern.append(re.escape(fmt[pos:]))
        self._fullmatch = re.compile("".join(pattern), re.DOTALL).fullmatch
        self._converters = tuple(converters)

    def parse(self, text: str) -> tuple | None:
        match = self._fullmatch(text)
        if match is None:
            return None
        values = zip(self._converters, match.groups(), strict=True)
        try:
            return tuple([convert(value) for convert, value in values])
        except ValueError:  # a digit int() does not take (\d is any Unicode digit)
            return None

    def __repr__(self) -> str:
        return f"PrintfFormat({self.fmt!r})"

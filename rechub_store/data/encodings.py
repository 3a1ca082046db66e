"""Which text encoding a CSV-like file is in, decided over the whole file before any row is loaded.

Real logs arrive as UTF-8, as latin-1 (MovieLens ships that way; UTF-8 re-encodings of it circulate
too), sometimes with a UTF-8 byte-order mark from spreadsheet exports, rarely as UTF-16. DuckDB's
CSV reader knows exactly `utf-8` (it skips a leading BOM), `latin-1` and `utf-16` (little-endian)
without the encodings extension, which cannot be downloaded here; these are the names we accept.

`auto` (the default everywhere): a UTF-16 BOM means UTF-16; else UTF-8 when every byte sequence of
the file is valid UTF-8; else latin-1, in which every byte is a character. Checking the whole file
costs one sequential read, like the sha256 that ingest computes anyway, and means that a bad byte
near the end is found before the first row is written, not halfway through a load.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from rechub_store.errors import UserError

ENCODINGS = ("auto", "utf-8", "latin-1", "utf-16")
_ALIASES = {
    "auto": "auto",
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "utf-8-sig": "utf-8",
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
    "iso8859-1": "latin-1",
    "l1": "latin-1",
    "utf16": "utf-16",
    "utf-16": "utf-16",
    "utf-16le": "utf-16",
}
_CHUNK = 1 << 22


def normalize_encoding(name: str) -> str:
    """`UTF8`, `ISO-8859-1`, `latin_1`, ... -> one of ENCODINGS; anything else is a UserError."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _ALIASES:
        raise UserError(
            f"--encoding: expected one of {', '.join(ENCODINGS)} (DuckDB reads no others), got {name!r}"
        )
    return _ALIASES[key]


def first_invalid_utf8(path: Path) -> tuple[int, int] | None:
    """(byte offset, 1-based line) of the first byte sequence that is not UTF-8, None if all are."""
    offset, line, pending = 0, 1, b""
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            data = pending + chunk
            try:
                # final=False keeps a multi-byte character split across chunks for the next round
                _, used = codecs.utf_8_decode(data, "strict", not chunk)
            except UnicodeDecodeError as exc:
                return offset + exc.start, line + data.count(b"\n", 0, exc.start)
            line += data.count(b"\n", 0, used)
            offset += used
            pending = data[used:]
            if not chunk:
                return None


def detect_encoding(path: Path, encoding: str = "auto") -> str:
    """The encoding to read `path` with (utf-8, latin-1 or utf-16), checked before any row is loaded.

    `auto` detects as the module docstring says. An explicit `utf-8` must hold for the whole
    file, else a one-line error names the first bad line; `latin-1` always holds; `utf-16` must
    not be big-endian (DuckDB reads only little-endian).
    """
    encoding = normalize_encoding(encoding)
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
        if head == b"\xfe\xff" and encoding in ("auto", "utf-16"):
            raise UserError(f"{path}: UTF-16 big-endian text is not supported; re-encode it as UTF-8")
        if encoding == "utf-16" or (encoding == "auto" and head == b"\xff\xfe"):
            return "utf-16"
        if encoding == "latin-1":
            return encoding
        bad = first_invalid_utf8(path)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if bad is None:
        return "utf-8"
    if encoding == "auto":
        return "latin-1"
    raise UserError(
        f"{path}: not valid UTF-8 at line {bad[1]} (byte {bad[0]}); pass --encoding latin-1 "
        "(or auto) if that is its encoding"
    )


def python_codec(encoding: str) -> str:
    """Python's name for reading the same text (header lines, small files) as DuckDB does."""
    return {"utf-8": "utf-8-sig", "latin-1": "latin-1", "utf-16": "utf-16"}[encoding]

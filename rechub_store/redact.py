"""Secrets never reach a message: passwords of database URLs are masked in everything stored or printed.

A password becomes known here when a URL carrying it is parsed (`register`); from then on
`redact(text)` masks it in every message this process writes: `meta.job_runs` rows, log files,
`error:` lines, `--json` output. The rule:

- a password of 4 or more characters: every run of 4 or more consecutive characters of the text
  that also occurs in the password is shown as `***`, so fragments leak as little as the whole
  (a driver that quotes part of a mistyped URL, a host name glued to the end of a password);
- a shorter password: every occurrence of the whole password (it is too short to mask by
  fragments without hiding most of the message, and too short to be a real secret anyway).

This module imports nothing from the package, so every layer can use it.
"""

from __future__ import annotations

import logging
import threading

MIN_FRAGMENT = 4
MASK = "***"

_lock = threading.Lock()
_grams: set[str] = set()  # every MIN_FRAGMENT-long substring of a registered password
_short: set[str] = set()  # registered passwords shorter than MIN_FRAGMENT


def register(secret: str | None) -> None:
    """Remember a secret (a password) so that `redact` masks it from now on."""
    if not secret:
        return
    with _lock:
        if len(secret) < MIN_FRAGMENT:
            _short.add(secret)
        else:
            _grams.update(secret[i : i + MIN_FRAGMENT] for i in range(len(secret) - MIN_FRAGMENT + 1))


def forget_all() -> None:
    """Drop every registered secret (tests)."""
    with _lock:
        _grams.clear()
        _short.clear()


def redact(text: str | None) -> str | None:
    """`text` with every registered secret (and every fragment of 4+ characters of one) masked."""
    if not text or not (_grams or _short):
        return text
    n = MIN_FRAGMENT
    marked = bytearray(len(text))
    for i in range(len(text) - n + 1):
        if text[i : i + n] in _grams:
            marked[i : i + n] = b"\x01" * n
    for secret in _short:
        start = text.find(secret)
        while start >= 0:
            marked[start : start + len(secret)] = b"\x01" * len(secret)
            start = text.find(secret, start + 1)
    if not any(marked):
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if marked[i]:
            while i < len(text) and marked[i]:
                i += 1
            out.append(MASK)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class RedactingFilter(logging.Filter):
    """A handler filter that masks registered secrets in the formatted message and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _grams or _short:
            record.msg = redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True

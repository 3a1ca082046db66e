"""`rechub-store` command line. Importing the command modules registers their commands."""

from __future__ import annotations

from rechub_store.cli import build, ingest, nightly, publish, report, score, train, tune  # noqa: F401  (registers commands)
from rechub_store.cli.app import app


def main() -> None:
    app(prog_name="rechub-store")  # also under `python -m rechub_store`


__all__ = ["app", "main"]

"""CLI commands: publish."""

from __future__ import annotations

from rechub_store.cli.app import app  # noqa: F401


"""The lake's published feature tables: `<lake>/features/_manifest.json`, replaced by one rename.

A build writes its tables under `features/builds/<build_id>/`, audits them, then writes the new
manifest to a temporary file and renames it over the old one (atomic on POSIX file systems and
on HDFS). Readers open the manifest once and read the folders it names, so they see the old
build or the new one, never a mix. The previous build is kept (readers that opened the old
manifest may still be reading it); older ones are deleted after a switch.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rechub_store.errors import AlreadyRunning, UserError

MANIFEST = "_manifest.json"
KEEP_BUILDS = 2  # the published build and the one before it


def features_dir(lake: Path) -> Path:
    return Path(lake) / "features"


def build_dir(lake: Path, build_id: str) -> Path:
    return features_dir(lake) / "builds" / build_id


def read(lake: Path) -> dict[str, Any] | None:
    """The published manifest, or None before the first build."""
    path = features_dir(lake) / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from exc


def table_path(lake: Path, manifest: dict[str, Any], table: str) -> Path:
    """The folder of a published table (paths in the manifest are relative to the lake)."""
    return Path(lake) / manifest["tables"][table]


def publish(lake: Path, manifest: dict[str, Any]) -> None:
    """Switch readers to `manifest` in one rename, then delete builds older than the previous one."""
    folder = features_dir(lake)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{MANIFEST}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True, default=str)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST)
    builds = folder / "builds"
    kept = {manifest["build_id"], *(manifest.get("previous_build_id") or "").split()}
    for old in sorted(builds.iterdir()) if builds.is_dir() else []:
        if old.name not in kept:
            shutil.rmtree(old, ignore_errors=True)


def discard(lake: Path, build_id: str) -> None:
    """Remove an unpublished (failed) build's folder."""
    shutil.rmtree(build_dir(lake, build_id), ignore_errors=True)


@contextmanager
def build_lock(lake: Path) -> Iterator[None]:
    """One build per lake at a time (a second one would delete the first one's folder when it
    publishes): an exclusive lock on `<lake>/features/.lock`, released when the process ends."""
    folder = features_dir(lake)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise AlreadyRunning(f"another build is running on the lake {lake}") from exc
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

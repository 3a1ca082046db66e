"""The model registry: `meta.model_runs` rows and artifacts under `<warehouse>/models/<run_id>/`.

An artifact (`model.pt`, plain tensors and JSON-able values, loadable with weights_only=True)
holds everything needed to rebuild the module and map codes: model name and keyword arguments,
the feature schema (vocabulary sizes, dense columns, max_seq_len), the state dict, the
resolved training config, the feature build id, score kind and temperature.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import torch
from torch import nn

from rechub_store.data.specs import FeatureSchema
from rechub_store.errors import UserError
from rechub_store.models import build_model
from rechub_store.warehouse import Warehouse, require_table

ARTIFACT_FILE = "model.pt"
ARTIFACT_FORMAT = 1


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_run_id(model: str) -> str:
    """`<model>-<UTC yyyymmddThhmmss>-<6 hex>`: sortable by time, unique across processes."""
    return f"{model}-{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def models_dir(con: duckdb.DuckDBPyConnection) -> Path:
    """`<warehouse folder>/models` for the database the connection is attached to."""
    row = con.execute(
        "SELECT path FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    if not row or not row[0]:
        raise UserError("model artifacts need a warehouse file (an in-memory database has no models folder)")
    return Warehouse(Path(row[0])).models_dir


def start_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    model: str,
    params: dict[str, Any],
    build_id: str | None,
    vocab_sizes: dict[str, int],
) -> None:
    con.execute(
        "INSERT INTO meta.model_runs (model_run_id, model, status, params, build_id, vocab_sizes, "
        "created_at) VALUES (?, ?, 'running', ?, ?, ?, ?)",
        [run_id, model, json.dumps(params, default=str), build_id, json.dumps(vocab_sizes), _now()],
    )


def finish_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    history: dict[str, Any],
    best_epoch: int,
    best_metric: float,
    artifact_path: str,
    wall_seconds: float,
    params: dict[str, Any] | None = None,
) -> None:
    """Mark a run successful; `params` (the fully resolved config) replaces the starting ones.

    `artifact_path` is stored relative to the warehouse folder (`models/<run id>`), so a copied,
    moved or restored warehouse loads its own artifacts, never the original's."""
    artifact_path = _relative_to_warehouse(con, artifact_path)
    con.execute(
        "UPDATE meta.model_runs SET status = 'success', history = ?, best_epoch = ?, best_metric = ?, "
        "artifact_path = ?, wall_seconds = ?, finished_at = ?, params = coalesce(?, params) "
        "WHERE model_run_id = ?",
        [
            json.dumps(history, default=str),
            best_epoch,
            best_metric,
            artifact_path,
            wall_seconds,
            _now(),
            None if params is None else json.dumps(params, default=str),
            run_id,
        ],
    )


def _relative_to_warehouse(con: duckdb.DuckDBPyConnection, path: str) -> str:
    root = models_dir(con).parent.resolve()
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:  # outside the warehouse folder: keep it as given
        return path


def artifact_location(con: duckdb.DuckDBPyConnection, model_run_id: str, stored: str) -> Path:
    """Where a run's artifact is now: a relative path (the norm) is relative to this warehouse's
    folder; an absolute one (older runs) is used only if it still exists, else this warehouse's
    `models/<run id>` (a copied warehouse must not read the original's files)."""
    path = Path(stored)
    if not path.is_absolute():
        return models_dir(con).parent / path
    if path.exists() and path.parent.resolve() == models_dir(con).resolve():
        return path
    return models_dir(con) / model_run_id


def fail_run(con: duckdb.DuckDBPyConnection, run_id: str, error: str, wall_seconds: float) -> None:
    con.execute(
        "UPDATE meta.model_runs SET status = 'failed', error = ?, wall_seconds = ?, finished_at = ? "
        "WHERE model_run_id = ?",
        [error[:2000], wall_seconds, _now(), run_id],
    )


def list_runs(con: duckdb.DuckDBPyConnection, limit: int | None = None) -> list[dict[str, Any]]:
    """Model runs, newest first, JSON columns decoded."""
    require_table(con, "meta.model_runs", "no model runs yet: run `rechub-store train`")
    sql = (
        "SELECT model_run_id, model, status, build_id, best_epoch, best_metric, wall_seconds, artifact_path, "
        "created_at, finished_at, error, params, vocab_sizes, history FROM meta.model_runs "
        "ORDER BY created_at DESC, model_run_id DESC"
    )
    if limit:
        sql += f" LIMIT {int(limit)}"
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for row in rows:
        for key in ("params", "vocab_sizes", "history"):
            if isinstance(row[key], str):
                row[key] = json.loads(row[key])
    return rows


def latest_run_id(con: duckdb.DuckDBPyConnection, model: str | None = None) -> str:
    """The newest successful model run (optionally of one model); UserError if there is none."""
    require_table(con, "meta.model_runs", "no model runs yet: run `rechub-store train`")
    sql = "SELECT model_run_id FROM meta.model_runs WHERE status = 'success'"
    params: list[Any] = []
    if model:
        sql += " AND model = ?"
        params.append(model)
    row = con.execute(sql + " ORDER BY finished_at DESC, model_run_id DESC LIMIT 1", params).fetchone()
    if row is None:
        raise UserError("no successful model run: run `rechub-store train` first")
    return str(row[0])


def save_artifact(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    model: nn.Module,
    config: Any,
    store: Any,
    history: list[dict[str, Any]],
) -> Path:
    """Write `<models>/<run_id>/model.pt` (+ `meta.json`) atomically via a temporary folder."""
    final = models_dir(con) / run_id
    tmp = final.parent / f".{run_id}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    payload = {
        "format": ARTIFACT_FORMAT,
        "model_run_id": run_id,
        "model": model.name,
        "model_config": dict(model.config),
        "schema": model.schema.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "max_seq_len": int(model.max_seq_len),
        "score_kind": str(model.score_kind),
        "temperature": float(model.temperature),
        "build_id": store.build_id,
        "train_config": json.loads(json.dumps(config.to_dict(), default=str)),
    }
    torch.save(payload, tmp / ARTIFACT_FILE)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["history"] = history
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


@dataclass
class LoadedModel:
    """A model rebuilt from its artifact, in eval mode, plus what the scorer needs to know."""

    model_run_id: str
    model: nn.Module
    model_name: str
    score_kind: str  # 'dot' | 'cosine'
    temperature: float
    max_seq_len: int
    build_id: str | None
    schema: FeatureSchema
    train_config: dict[str, Any]
    artifact_path: Path


def load_artifact(path: Path | str) -> LoadedModel:
    """Rebuild a model from an artifact folder (or its model.pt)."""
    path = Path(path)
    file = path / ARTIFACT_FILE if path.is_dir() else path
    if not file.exists():
        raise UserError(f"model artifact {file} is missing")
    payload = torch.load(file, map_location="cpu", weights_only=True)
    schema = FeatureSchema.from_dict(payload["schema"])
    config = dict(payload["model_config"])
    if "hidden" in config:
        config["hidden"] = tuple(config["hidden"])
    model = build_model(payload["model"], schema, **config)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return LoadedModel(
        model_run_id=payload["model_run_id"],
        model=model,
        model_name=payload["model"],
        score_kind=payload["score_kind"],
        temperature=float(payload["temperature"]),
        max_seq_len=int(payload["max_seq_len"]),
        build_id=payload.get("build_id"),
        schema=schema,
        train_config=payload.get("train_config", {}),
        artifact_path=file.parent,
    )


def load_model(target: Warehouse | duckdb.DuckDBPyConnection, model_run_id: str | None = None) -> LoadedModel:
    """Load a registered model run (default: the latest successful one)."""
    if isinstance(target, Warehouse):
        with target.session(read_only=True) as con:
            return load_model(con, model_run_id)
    con = target
    run_id = model_run_id or latest_run_id(con)
    row = con.execute(
        "SELECT status, artifact_path FROM meta.model_runs WHERE model_run_id = ?", [run_id]
    ).fetchone()
    if row is None:
        raise UserError(f"model run {run_id!r} not found: see `rechub-store runs`")
    if row[0] != "success" or not row[1]:
        raise UserError(f"model run {run_id!r} has status {row[0]} and no usable artifact")
    return load_artifact(artifact_location(con, run_id, row[1]))

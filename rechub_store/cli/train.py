"""CLI: `rechub-store train` (fit + register a model) and `rechub-store runs` (list the registry)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Json, settings_from
from rechub_store.config import TRAIN_NEG_MODES, TRAIN_NEG_SAMPLERS
from rechub_store.errors import UserError
from rechub_store.models import MODELS
from rechub_store.pipeline.distributed import train_distributed, world_size
from rechub_store.training.config import NEIGHBOUR_MODELS, TrainConfig
from rechub_store.training.registry import list_runs


@app.command("train")
def train_command(
    ctx: typer.Context,
    model: str = typer.Option(
        "sasrec", "--model", "-m", help=f"Model: {' | '.join([*MODELS, *NEIGHBOUR_MODELS])}."
    ),
    epochs: int = typer.Option(None, help="Maximum epochs (default: dssm/youtubednn 20, gru4rec/sasrec 50)."),
    batch_size: int = typer.Option(None, help="Samples per batch (default: 512)."),
    lr: float = typer.Option(None, help="Adam learning rate (default: 1e-3)."),
    weight_decay: float = typer.Option(0.0, help="Adam weight decay (then all embedding tables are dense)."),
    sparse_embeddings: bool = typer.Option(
        None,
        "--sparse-embeddings/--dense-embeddings",
        help="Row-sparse gradients + lazy Adam for lightly used tables (default: on without weight decay).",
    ),
    embed_dim: int = typer.Option(None, help="Embedding / output vector size (default: 64)."),
    neg_mode: str = typer.Option(
        None,
        help=f"Objective: {' | '.join(TRAIN_NEG_MODES)} "
        "(default: full softmax up to 100k items, else listwise).",
    ),
    neg_ratio: int = typer.Option(
        None, help="Negatives per positive (default: pointwise 4, pairwise 1, listwise 20)."
    ),
    neg_sampler: str = typer.Option(
        "uniform", help=f"Negatives: {' | '.join(TRAIN_NEG_SAMPLERS)} (static = built ones)."
    ),
    in_batch: bool = typer.Option(
        None, "--in-batch/--no-in-batch", help="List-wise: other rows' positives too."
    ),
    logq: bool = typer.Option(True, "--logq/--no-logq", help="In-batch popularity (logQ) correction."),
    max_seq_len: int = typer.Option(None, help="History window (default: the feature build's max_seq_len)."),
    patience: int = typer.Option(3, help="Stop after this many epochs without a better valid NDCG@10."),
    seed: int = typer.Option(42, help="Seed (weights, shuffling, negatives)."),
    valid_users: int = typer.Option(
        None, help="Validate on a seeded sample of this many users (default: all)."
    ),
    seen_filter: str = typer.Option(
        "except-target",
        "--seen-filter",
        help="Validation: history removed from the ranking: except-target | all | none.",
    ),
    streaming: bool = typer.Option(False, "--streaming", help="Stream training samples from DuckDB."),
    seq_train: bool = typer.Option(
        None,
        "--seq-train/--no-seq-train",
        help="All-position training for gru4rec/sasrec (default: on for them).",
    ),
    resume: str = typer.Option(
        None, "--resume", help="Under torchrun: continue this interrupted run from its last checkpoint."
    ),
    as_json: Json = False,
) -> None:
    """Train a two-tower model on the feature store and register it in meta.model_runs.

    Under torchrun (`torchrun --nproc-per-node N -m rechub_store train ...`) the processes train
    one model data-parallel (DDP); rank 0 registers and prints it.
    """
    config = settings_from(ctx, TrainConfig, progress=not as_json)
    if world_size() > 1:
        result = train_distributed(warehouse_of(ctx), config, resume=resume)
        if result is None:  # ranks other than 0 print nothing
            return
    elif resume is not None:
        raise UserError("--resume: only under torchrun (checkpoints are written by distributed training)")
    else:
        result = api.train(warehouse_of(ctx), config)
    if as_json:
        print_json(result.to_dict())
        return
    Console().print(
        f"model run [bold]{result.model_run_id}[/]: best epoch {result.best_epoch}, valid NDCG@10 "
        f"{result.best_metric:.4f} (popularity {result.popularity_metric:.4f}), "
        f"{result.samples_per_second:,.0f} samples/s, {result.wall_seconds:.1f}s\n"
        f"artifact {result.artifact_path}"
    )


@app.command("runs")
def runs_command(
    ctx: typer.Context,
    limit: int = typer.Option(20, help="Show the newest N runs (0 = all)."),
    as_json: Json = False,
) -> None:
    """List model runs (newest first) from the registry."""
    with warehouse_of(ctx).session(read_only=True) as con:
        rows = list_runs(con, limit or None)
    if as_json:
        print_json(rows)
        return
    table = Table(title="model runs")
    for col in ("model_run_id", "model", "status", "best_epoch", "valid NDCG@10", "seconds", "created_at"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["model_run_id"],
            r["model"],
            r["status"],
            str(r["best_epoch"] or ""),
            f"{r['best_metric']:.4f}" if r["best_metric"] is not None else "",
            f"{r['wall_seconds']:.1f}" if r["wall_seconds"] is not None else "",
            str(r["created_at"])[:19],
        )
    Console().print(table)

"""Training with torchrun: `torchrun --nproc-per-node N -m rechub_store train ...` (multi-node: add
`--nnodes`, `--node-rank` and `--rdzv-endpoint`, as torchrun documents).

Each process (rank) reads the feature store read-only and trains on its shard of the training
samples (the users with user_code % world_size == rank, so a user's samples stay together, as
all-position training needs). The model is wrapped in DistributedDataParallel (gloo on CPU, nccl
on GPU): every step averages the gradients of all ranks, so every rank holds the same weights.
Each rank takes the same number of steps per epoch (the smallest shard's batch count), with
batch_size / world_size samples per step, so one step sees about as many samples as a
one-process step. Rank 0 alone writes: the registry row (`meta.model_runs`), a checkpoint after
every epoch (`models/<run>.checkpoint.pt`: weights, Adam state, early-stopping state) and the
artifact; it evaluates the validation split and sends the metric to the others, so all ranks stop
at the same epoch. `--resume RUN_ID` continues an interrupted run from its last checkpoint (same
world size). Embedding tables are dense in this mode (lazy sparse Adam keeps per-process state).
The same seed and world size give the same model.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rechub_store.data.readers import FeatureStore, ItemPopularityIndex, Samples
from rechub_store.errors import UserError
from rechub_store.models.features import Embeddings
from rechub_store.ranking.validation import protocol_validation
from rechub_store.training import registry
from rechub_store.training.config import TrainConfig
from rechub_store.training.trainer import (
    EVAL_K,
    FitResult,
    ModelRunResult,
    Trainer,
    Validation,
    _report_epoch,
    fit_model,
)
from rechub_store.warehouse import Warehouse

CHECKPOINT = "{run_id}.checkpoint.pt"  # beside the run's artifact folder, which is replaced whole


def world_size() -> int:
    """Processes in the job: torchrun sets WORLD_SIZE; 1 when run directly."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class _Objective(nn.Module):
    """The trainer's loss as a module's forward, so DDP sees the model's parameters and its
    backward (the trainer itself calls the towers directly)."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.trainer = trainer
        self.model = trainer.model

    def forward(self, prep: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss, n = self.trainer.loss(prep)
        return loss, torch.tensor(n)


def _min_across(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _sum_across(*values: float) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _from_rank0(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _save(path: Path, state: dict[str, Any]) -> None:
    """Atomically: a killed rank 0 leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def shard(samples: Samples, rank: int, world: int) -> Samples:
    """This rank's training samples: the users with user_code % world == rank."""
    return samples.take(np.flatnonzero(samples.user_code % world == rank))


def _fit(
    trainer: Trainer,
    valid: Samples | None,
    validation: Validation | None,
    *,
    checkpoint: Path,
    resume: dict | None,
) -> FitResult:
    """Trainer.fit's loop under DDP: same objective, early stopping on rank 0's validation."""
    cfg = trainer.config
    rank, world = dist.get_rank(), dist.get_world_size()
    for module in trainer.model.modules():  # DDP averages dense gradients only
        if isinstance(module, Embeddings):
            module.sparse_pooling = False
    ddp = DistributedDataParallel(_Objective(trainer), find_unused_parameters=True)
    result = FitResult()
    best_state: dict[str, torch.Tensor] | None = None
    stale, start, total_samples, total_time = 0, 1, 0, 0.0
    if resume is not None:
        trainer.model.load_state_dict(resume["model"])
        trainer.optimizer.load_state_dict(resume["optimizer"])
        best_state, stale, start = resume["best_state"], resume["stale"], resume["epoch"] + 1
        result.history, result.best_epoch, result.best_metric = (
            resume["history"],
            resume["best_epoch"],
            resume["best_metric"],
        )
        result.popularity = resume["popularity"]
        torch.set_rng_state(resume["torch_rng"][rank])
    elif valid is not None and len(valid) and rank == 0 and validation and validation.baseline is not None:
        result.popularity = validation.baseline(valid)
    for epoch in range(start, int(cfg.epochs) + 1):
        trainer.model.train()
        steps = _min_across(math.ceil(len(trainer.source) / trainer.units_per_batch))
        loss_sum, rows = 0.0, 0
        t0 = time.perf_counter()
        with closing(trainer.prepared_batches(epoch)) as batches:
            for _, prep in zip(range(steps), batches, strict=False):
                loss, n = ddp(prep)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"training diverged at epoch {epoch} (loss {loss.item()}): lower --lr")
                trainer.optimizer.zero_grad()
                loss.backward()
                if cfg.grad_clip and cfg.grad_clip > 0:
                    trainer.optimizer.clip_grad_norm(cfg.grad_clip)
                trainer.optimizer.step()
                loss_sum += float(loss.detach()) * int(n)
                rows += int(n)
        train_s = time.perf_counter() - t0
        loss_sum, rows_all = _sum_across(loss_sum, rows)
        total_samples += int(rows_all)
        total_time += train_s
        row: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": round(loss_sum / max(rows_all, 1), 6),
            "train_seconds": round(train_s, 3),
            "samples_per_second": round(rows_all / max(train_s, 1e-9), 1),
            "world_size": world,
        }
        if valid is not None and len(valid) and validation is not None:
            scores = None
            if rank == 0:
                t1 = time.perf_counter()
                scores = validation.model(trainer.model, valid)
                row["valid_seconds"] = round(time.perf_counter() - t1, 3)
            row["valid"] = _from_rank0(scores)
            metric = row["valid"][f"ndcg@{EVAL_K}"]
        else:
            metric = -row["train_loss"]
        row["elapsed_seconds"] = round(total_time, 3)
        result.history.append(row)
        if cfg.progress and rank == 0:
            _report_epoch(row, result.popularity)
        improved = metric > result.best_metric
        if improved:
            result.best_metric, result.best_epoch, stale = metric, epoch, 0
            best_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
        else:
            stale += 1
        # every rank's torch generator (dropout draws differ per shard), so a resumed epoch is
        # the epoch an uninterrupted run would have trained
        generators = [None] * world
        dist.all_gather_object(generators, torch.get_rng_state())
        if rank == 0:
            _save(
                checkpoint,
                {
                    "torch_rng": generators,
                    "epoch": epoch,
                    "world_size": world,
                    "model": trainer.model.state_dict(),
                    "optimizer": trainer.optimizer.state_dict(),
                    "best_state": best_state,
                    "best_metric": result.best_metric,
                    "best_epoch": result.best_epoch,
                    "stale": stale,
                    "history": result.history,
                    "popularity": result.popularity,
                },
            )
        if not improved and stale >= cfg.patience:
            break
    if best_state is not None:
        trainer.model.load_state_dict(best_state)
    trainer.model.eval()
    result.samples_per_second = total_samples / max(total_time, 1e-9)
    return result


def train_distributed(
    warehouse: Warehouse, config: TrainConfig, resume: str | None = None
) -> ModelRunResult | None:
    """One rank's part of a torchrun job; rank 0 returns the run's summary, the others None."""
    if config.streaming or config.neg_sampler == "static":
        raise UserError(
            "torchrun training reads samples in memory: --streaming and static negatives are local only"
        )
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        result = _train(warehouse, config, rank, world, resume)
        # leave together: a rank that tore down gloo and exited while rank 0 was still saving the
        # model aborted ("terminate called without an active exception") on a loaded machine
        dist.barrier()
        return result
    finally:
        dist.destroy_process_group()


def _train(
    warehouse: Warehouse, config: TrainConfig, rank: int, world: int, resume: str | None
) -> ModelRunResult | None:
    t0 = time.perf_counter()
    # Every rank reads the warehouse read-only (DuckDB lets processes share a file that way),
    # before rank 0 opens it for writing.
    with warehouse.session(read_only=True) as con:
        store = FeatureStore.load(con, config.max_seq_len, splits=("train", "valid"), popularity_index=True)
        pop_index = store.popularity_index or ItemPopularityIndex.load(con, store.n_items)
    dist.barrier()  # every read-only connection is closed before rank 0 opens the file for writing
    store.samples["train"] = shard(store.samples["train"], rank, world)
    per_rank = max(1, int(config.batch_size or 512) // world)
    cfg = replace(
        config.resolve(store.n_items),
        max_seq_len=config.max_seq_len or store.max_seq_len,
        batch_size=per_rank,
        sparse_embeddings=False,
        progress=config.progress and rank == 0,
    )
    schema = store.schema(cfg.max_seq_len)
    state = None
    if rank == 0:
        with warehouse.session() as con:
            if resume:
                run_id = resume
                path = registry.models_dir(con) / CHECKPOINT.format(run_id=run_id)
                if not path.exists():
                    raise UserError(f"--resume {run_id}: no checkpoint at {path}")
                state = torch.load(path, weights_only=False)
                if state["world_size"] != world:
                    raise UserError(
                        f"--resume {run_id}: checkpoint of {state['world_size']} processes, "
                        f"this job has {world}"
                    )
            else:
                run_id = registry.new_run_id(cfg.model)
                params = {**cfg.to_dict(), "world_size": world, "batch_size_per_rank": per_rank}
                registry.start_run(con, run_id, cfg.model, params, store.build_id, schema.vocab_sizes())
            checkpoint = registry.models_dir(con) / CHECKPOINT.format(run_id=run_id)
        shared = (run_id, str(checkpoint), state)
    else:
        shared = None
    run_id, checkpoint_path, state = _from_rank0(shared)
    checkpoint = Path(checkpoint_path)
    try:
        model, fit, cfg = fit_model(
            store,
            cfg,
            threads=warehouse.threads,
            popularity_index=lambda: pop_index,
            validation=protocol_validation(store, cfg),
            fit=lambda trainer, valid, validation: _fit(
                trainer, valid, validation, checkpoint=checkpoint, resume=state
            ),
        )
    except BaseException as exc:
        if rank == 0:
            with warehouse.session() as con:
                registry.fail_run(
                    con, run_id, f"{type(exc).__name__}: {exc}".splitlines()[0], time.perf_counter() - t0
                )
        raise
    if rank != 0:
        return None
    wall = time.perf_counter() - t0
    with warehouse.session() as con:
        artifact = registry.save_artifact(con, run_id, model, cfg, store, fit.history)
        history = {"epochs": fit.history, "popularity_valid": fit.popularity, "world_size": world}
        registry.finish_run(
            con, run_id, history, fit.best_epoch, fit.best_metric, str(artifact), wall, cfg.to_dict()
        )
    return ModelRunResult.of(run_id, cfg, fit, artifact, wall, store.build_id, schema.vocab_sizes())

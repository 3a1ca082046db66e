"""The trainer: knows only the two-tower interface (user_tower, item_tower, score_kind and,
optionally, sequence_outputs).

`train(con_or_warehouse, TrainConfig, validation)` loads the feature store, fits with early
stopping on validation NDCG@10, restores the best epoch, saves the artifact and registers the run
in `meta.model_runs` (a failed run is recorded as failed).

Validation is injected (`Validation`): the trainer knows no ranking protocol, since `ranking` is
a layer above `training`. `rechub_store.pipeline.train` composes the two (the evaluation protocol
of `rechub_store.ranking.protocol`: exact full ranking, the config's seen filter, pessimistic
ties) and is what the CLI, the nightly job and notebooks call.

Point-in-time inputs: users are encoded with their samples' `user_event_count_scaled`; when the
item tower reads item popularity, every item a row scores (the target, sampled negatives) gets its
popularity at that row's event time, and what a step encodes once for the whole batch (the
catalogue under full softmax) gets the popularity at the batch's earliest event, with batches cut
from time-ordered samples so that this is close for every row. In-batch negatives reuse the other
rows' positives as encoded for those rows.

Objectives: point-wise BCE, pair-wise BPR, list-wise softmax over the positive + sampled
negatives (+ in-batch negatives with logQ correction and accidental hits masked), or `full`
softmax over the whole catalogue. Models with `sequence_outputs` (causal: GRU4Rec, SASRec) train
every target of a history window in one pass (`SequenceSource`), which gives exactly the user
vectors inference computes for each prefix (tested) at a fraction of the cost.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import duckdb
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from rechub_store.data.readers import (
    FeatureStore,
    InMemorySamples,
    ItemPopularityIndex,
    NegativeSampler,
    Samples,
    SequenceSource,
    SequenceUnits,
    StreamingSamples,
    prefetch,
)
from rechub_store.errors import UserError
from rechub_store.models import build_model
from rechub_store.models.features import reads_item_popularity
from rechub_store.training import losses, registry
from rechub_store.training.config import TrainConfig
from rechub_store.training.optim import TwoTowerAdam

EVAL_K = 10


@dataclass
class ModelRunResult:
    """What a training run produced (also what `rechub-store train --json` prints)."""

    model_run_id: str
    model: str
    status: str
    best_epoch: int
    best_metric: float  # validation NDCG@10 of the best epoch
    popularity_metric: float  # validation NDCG@10 of the popularity baseline
    history: list[dict[str, Any]]
    artifact_path: str
    wall_seconds: float
    build_id: str | None
    params: dict[str, Any]
    vocab_sizes: dict[str, int]
    samples_per_second: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def of(
        cls,
        run_id: str,
        cfg: TrainConfig,
        fit: FitResult,
        artifact: Any,
        wall: float,
        build_id: str | None,
        vocab: dict[str, int],
    ) -> ModelRunResult:
        """A successful run's summary."""
        return cls(
            model_run_id=run_id,
            model=cfg.model,
            status="success",
            best_epoch=fit.best_epoch,
            best_metric=fit.best_metric,
            popularity_metric=fit.popularity.get(f"ndcg@{EVAL_K}", 0.0),
            history=fit.history,
            artifact_path=str(artifact),
            wall_seconds=round(wall, 3),
            build_id=build_id,
            params=cfg.to_dict(),
            vocab_sizes=vocab,
            samples_per_second=round(fit.samples_per_second, 1),
        )


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float = -1.0
    popularity: dict[str, float] = field(default_factory=dict)
    samples_per_second: float = 0.0
    stopped_by: str | None = None  # "callback" when an epoch callback ended training early


# Called after each epoch with (epoch, validation NDCG@10 or -train loss, the epoch's history row);
# returning True stops training there (the best epoch so far is kept). Tuning prunes through it.
EpochCallback = Callable[[int, float, dict[str, Any]], bool | None]
# Asked before every step; True abandons the running epoch unvalidated and ends training with the best
# epoch so far (tuning's wall-clock budget, when one epoch is long).
StopCheck = Callable[[], bool]


@dataclass
class Prepared:
    """One step's inputs, built by `Trainer.prepare` (data side only, no autograd)."""

    users: dict[str, torch.Tensor]  # user-tower batch
    seq_mask: torch.Tensor | None  # [B, L] window positions trained (all-position batches)
    targets: torch.Tensor  # [M] positive item codes
    items: dict[str, torch.Tensor] | None = None  # item-tower batch of the unique target/negative codes
    item_index: torch.Tensor | None = None  # [M, 1+R] rows of `items`: the positive, then negatives
    neg_mask: torch.Tensor | None = None  # [M, R] usable negatives (code > 0)


# ---------------------------------------------------------------------- validation
@dataclass(frozen=True)
class Validation:
    """How the fit loop scores the validation samples, given by the caller.

    Both callables return flat metrics keyed `<metric>@<k>` and must include `ndcg@10`, the early
    stopping metric. `baseline` (optional) is scored once, before the first epoch, for reference.
    """

    model: Callable[[nn.Module, Samples], dict[str, float]]
    baseline: Callable[[Samples], dict[str, float]] | None = None


def _valid_subset(samples: Samples, limit: int | None, seed: int) -> Samples:
    if limit is None or len(samples) <= limit:
        return samples
    idx = np.sort(np.random.default_rng([seed, 7]).choice(len(samples), size=limit, replace=False))
    return samples.take(idx)


# ---------------------------------------------------------------------- fitting
@contextmanager
def progress_bar(enabled: bool, label: str, task: str, total: int | None) -> Iterator[Any]:
    """A transient bar on stderr (label, bar, n/total, elapsed, an `info` field): yields (bar, task
    id), or None when disabled. Shared by the epochs of training and the trials of tuning."""
    if not enabled:
        yield None
        return
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield (bar, bar.add_task(task, total=total, info=""))


class Trainer:
    """Fits any two-tower model on a FeatureStore with the configured objective."""

    def __init__(
        self,
        model: nn.Module,
        store: FeatureStore,
        config: TrainConfig,
        source: InMemorySamples | StreamingSamples | SequenceSource,
    ) -> None:
        self.model = model
        self.store = store
        self.config = config
        self.source = source
        self.kind = str(model.score_kind)
        self.temperature = float(model.temperature)
        self.max_seq_len = int(model.max_seq_len)
        self.sampler = None
        if config.neg_mode != "full" and config.neg_sampler != "static" and (config.neg_ratio or 0) > 0:
            self.sampler = NegativeSampler(store, config.neg_sampler, config.neg_alpha)  # type: ignore[arg-type]
        counts = np.maximum(store.item_train_count, 1.0)
        self.log_q = torch.from_numpy(np.log(counts / counts.sum())).float()
        self.optimizer = TwoTowerAdam(
            model, float(config.lr), config.weight_decay, sparse=config.sparse_embeddings
        )
        self.steps = 0  # optimizer steps taken (the warm-up schedule counts them)
        # items enter the tower with point-in-time popularity when it reads popularity at all
        self.item_pit = reads_item_popularity(model, store)
        if self.item_pit and store.popularity_index is None:
            raise UserError("the model reads item popularity: load the store with popularity_index=True")
        full = config.neg_mode == "full" and not self.item_pit  # else encoded per batch (`prepare`)
        self._all_items = store.item_batch(np.arange(store.n_items)) if full else None
        # the samples whose point-in-time columns all-position units look up
        self.unit_samples = source.samples if isinstance(source, SequenceSource) else None
        # all-position sources hold several targets per unit: keep ~batch_size targets per step
        self.units_per_batch = int(config.batch_size)
        if isinstance(source, SequenceSource) and len(source):
            self.units_per_batch = max(1, round(int(config.batch_size) * len(source) / source.n_targets))

    def prepare(self, batch: Samples | SequenceUnits, rng: np.random.Generator) -> Prepared:
        """Everything a step needs from the data side (numpy gathers, negatives): no autograd, so
        it can run in the prefetch thread while the previous step computes.

        A `SequenceUnits` batch is trained at every position in one pass (`sequence_outputs`):
        its targets are every real item of the windows.
        """
        cfg = self.config
        negs = None
        if isinstance(batch, SequenceUnits):
            assert self.unit_samples is not None
            # one user row per unit: its features are those of the unit's earliest target, so that
            # none of its targets sees a later count (the sequence models read none today)
            first = self.unit_samples.take(self.unit_samples.lookup(batch.user_code, batch.lo))
            users = self.store.user_batch(
                batch.user_code, batch.end - 1, self.max_seq_len, event_count=first.user_count
            )
            width = users["hist"].shape[1]
            window = self.store.history_windows(batch.user_code, batch.end, width)
            positions = batch.end[:, None] - width + np.arange(width)[None, :]
            mask = (positions >= batch.lo[:, None]) & (window > 0)
            targets = window[mask]
            user_codes = np.broadcast_to(batch.user_code[:, None], mask.shape)[mask]
            target_pos = positions[mask]
            seq_mask: torch.Tensor | None = torch.from_numpy(mask)
            rows = (
                self.unit_samples.take(self.unit_samples.lookup(user_codes, target_pos))
                if self.item_pit
                else None
            )
        else:
            users = self.store.user_batch(
                batch.user_code, batch.pos, self.max_seq_len, event_count=batch.user_count
            )
            targets, user_codes, seq_mask, negs = batch.target, batch.user_code, None, batch.negatives
            target_pos, rows = batch.pos, batch
        prep = Prepared(users, seq_mask, torch.from_numpy(targets))
        if cfg.neg_mode == "full":
            if self.item_pit:
                assert rows is not None and rows.event_ts is not None
                # the catalogue once per batch: popularity known at the batch's earliest event
                codes = np.arange(self.store.n_items, dtype=np.int64)
                when = np.full(codes.shape, int(rows.event_ts.min()))
                prep.items = self.store.item_batch(codes, popularity=self.store.popularity_at(codes, when))
            return prep
        n = targets.shape[0]
        if cfg.neg_sampler == "static":
            if negs is None:
                raise UserError("static negatives requested but features.negatives_train was not loaded")
        elif self.sampler is not None:
            negs = self.sampler.sample(user_codes, int(cfg.neg_ratio), rng, positions=target_pos)
        else:
            negs = np.zeros((n, 0), dtype=np.int64)
        codes = np.concatenate([targets[:, None], negs], axis=1)
        if self.item_pit:
            assert rows is not None and rows.event_ts is not None and rows.item_pop is not None
            # every (row, item) at the row's event time: the target's from SQL, negatives' computed
            neg_pop = self.store.popularity_at(negs.ravel(), np.repeat(rows.event_ts, negs.shape[1]))
            pops = np.concatenate([rows.item_pop[:, None], neg_pop.reshape(negs.shape)], axis=1)
            keys = (codes << 32) | pops.astype(np.float32).view(np.uint32).astype(np.int64)
            _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            prep.items = self.store.item_batch(codes.ravel()[first], popularity=pops.ravel()[first])
        else:
            uniq, inverse = np.unique(codes, return_inverse=True)
            prep.items = self.store.item_batch(uniq)
        prep.item_index = torch.from_numpy(inverse.reshape(codes.shape))
        prep.neg_mask = torch.from_numpy(negs > 0)
        return prep

    def loss(self, prep: Prepared) -> tuple[torch.Tensor, int]:
        """The configured objective on one prepared batch; returns (loss, number of positive targets)."""
        cfg = self.config
        if prep.seq_mask is not None:
            user = self.model.sequence_outputs(prep.users)[prep.seq_mask]
        else:
            user = self.model.user_tower(prep.users)
        target = prep.targets
        n = int(target.shape[0])
        if cfg.neg_mode == "full":
            items = self.model.item_tower(prep.items if prep.items is not None else self._all_items)
            logits = losses.similarity(user, items, self.kind, self.temperature)
            logits[:, 0] = float("-inf")
            return torch.nn.functional.cross_entropy(logits, target), n
        assert prep.items is not None and prep.item_index is not None and prep.neg_mask is not None
        vecs = self.model.item_tower(prep.items)
        # index_select: its backward is a scatter-add, cheaper on CPU than indexing's index_put
        index = prep.item_index
        table = vecs.index_select(0, index.reshape(-1)).view(*index.shape, -1)  # [M, 1+R, D]
        scores = losses.similarity(user, table, self.kind, self.temperature)
        neg_mask = prep.neg_mask
        if cfg.neg_mode == "pointwise":
            return losses.pointwise_bce(scores[:, 0], scores[:, 1:], neg_mask.float()), n
        if cfg.neg_mode == "pairwise":
            return losses.pairwise_bpr(scores[:, 0], scores[:, 1:], neg_mask.float()), n
        mask = torch.cat([torch.ones(n, 1, dtype=torch.bool), neg_mask], dim=1)
        if cfg.in_batch:
            pos_vecs = table[:, 0]
            log_q = self.log_q[target] if cfg.logq else None
            ib, ib_mask = losses.in_batch_logits(user, pos_vecs, target, self.kind, self.temperature, log_q)
            if log_q is not None:  # the positive is an in-batch column too: same correction
                scores = torch.cat([scores[:, :1] - log_q.unsqueeze(1), scores[:, 1:]], dim=1)
            scores = torch.cat([scores, ib], dim=1)
            mask = torch.cat([mask, ib_mask], dim=1)
        return losses.listwise_softmax(scores, mask), n

    def train_step(self, prep: Prepared, epoch: int) -> tuple[float, int]:
        """One optimizer step on a prepared batch; returns (loss, number of positive targets)."""
        loss, n_targets = self.loss(prep)
        if not torch.isfinite(loss):
            raise RuntimeError(f"training diverged at epoch {epoch} (loss {loss.item()}): lower --lr")
        self.optimizer.zero_grad()
        loss.backward()
        self.steps += 1
        warmup = int(self.config.warmup_steps or 0)
        if warmup > 0 and self.steps <= warmup + 1:
            self.optimizer.set_lr(float(self.config.lr) * min(1.0, self.steps / warmup))
        if self.config.grad_clip and self.config.grad_clip > 0:
            self.optimizer.clip_grad_norm(self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), n_targets

    def prepared_batches(self, epoch: int) -> Iterator[Prepared]:
        """The epoch's prepared batches, produced one step ahead in a background thread (numpy and
        torch release the GIL for their kernels, so the data side overlaps the previous step).
        One producer, consuming the seeded generator in order: the batches are the same as inline."""
        rng = np.random.default_rng([self.config.seed, epoch, 1])
        batches = (self.prepare(b, rng) for b in self.source.batches(epoch, self.units_per_batch))
        if not self.config.prefetch:
            yield from batches
            return
        yield from prefetch(batches, depth=2)

    def fit(
        self,
        valid: Samples | None,
        validation: Validation | None = None,
        on_epoch: EpochCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> FitResult:
        """Epochs until `patience` epochs without a better validation NDCG@10 (without validation
        samples or a `validation`: the training loss); the best epoch's weights are restored.
        `on_epoch` / `should_stop`: see `EpochCallback` / `StopCheck`."""
        cfg = self.config
        result = FitResult()
        if validation is None:
            valid = None
        if valid is not None and len(valid) and validation is not None and validation.baseline is not None:
            result.popularity = validation.baseline(valid)
        best_state: dict[str, torch.Tensor] | None = None
        stale = 0
        total_samples, total_time = 0, 0.0
        n_batches = math.ceil(len(self.source) / self.units_per_batch)
        for epoch in range(1, int(cfg.epochs) + 1):
            self.model.train()
            loss_sum, seen_rows, data_s = 0.0, 0, 0.0
            t0 = time.perf_counter()
            # closing(): the prefetch thread is stopped when the epoch ends, by an error too
            with (
                progress_bar(cfg.progress, f"epoch {epoch}", "train", n_batches) as bar,
                closing(self.prepared_batches(epoch)) as batches,
            ):
                t_data = time.perf_counter()
                for prep in batches:
                    if should_stop is not None and should_stop():
                        result.stopped_by = "stop check"
                        break
                    data_s += time.perf_counter() - t_data  # time the step waited for its data
                    loss, n_targets = self.train_step(prep, epoch)
                    loss_sum += loss * n_targets
                    seen_rows += n_targets
                    if bar is not None:
                        rate = seen_rows / max(time.perf_counter() - t0, 1e-9)
                        bar[0].update(
                            bar[1], advance=1, info=f"loss {loss_sum / seen_rows:.4f}  {rate:,.0f} samples/s"
                        )
                    t_data = time.perf_counter()
            if result.stopped_by is not None:
                break
            train_s = time.perf_counter() - t0
            total_samples += seen_rows
            total_time += train_s
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": round(loss_sum / max(seen_rows, 1), 6),
                "train_seconds": round(train_s, 3),
                "data_seconds": round(data_s, 3),
                "samples_per_second": round(seen_rows / max(train_s, 1e-9), 1),
            }
            if valid is not None and len(valid) and validation is not None:
                t1 = time.perf_counter()
                row["valid"] = validation.model(self.model, valid)
                row["valid_seconds"] = round(time.perf_counter() - t1, 3)
                metric = row["valid"][f"ndcg@{EVAL_K}"]
            else:
                metric = -row["train_loss"]
            row["elapsed_seconds"] = round(total_time, 3)
            result.history.append(row)
            if cfg.progress:
                _report_epoch(row, result.popularity)
            if metric > result.best_metric:
                result.best_metric, result.best_epoch, stale = metric, epoch, 0
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
            if on_epoch is not None and on_epoch(epoch, metric, row):
                result.stopped_by = "callback"
                break
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        result.samples_per_second = total_samples / max(total_time, 1e-9)
        return result


def _report_epoch(row: dict[str, Any], popularity: dict[str, float]) -> None:
    valid = row.get("valid", {})
    text = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, {row['samples_per_second']:,.0f} samples/s"
    if valid:
        text += (
            f", valid NDCG@10 {valid[f'ndcg@{EVAL_K}']:.4f} Hit@10 {valid[f'hit@{EVAL_K}']:.4f}"
            f" (popularity {popularity.get(f'ndcg@{EVAL_K}', 0):.4f})"
        )
    Console(stderr=True).print(text)


# ---------------------------------------------------------------------- orchestration
def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def fit_model(
    store: FeatureStore,
    config: TrainConfig,
    source: InMemorySamples | StreamingSamples | SequenceSource | None = None,
    threads: int | None = None,
    popularity_index: Callable[[], ItemPopularityIndex] | None = None,
    validation: Validation | None = None,
    on_epoch: EpochCallback | None = None,
    should_stop: StopCheck | None = None,
    fit: Callable[[Trainer, Samples | None, Validation | None], FitResult] | None = None,
) -> tuple[nn.Module, FitResult, TrainConfig]:
    """Build and fit a model on an already loaded store (no registry); used by `train` and tests.

    `threads`: torch intra-op threads (default: every core).
    `validation`: how the validation samples are scored (None: no validation, the training loss).
    `popularity_index`: loads the store's point-in-time popularity index if the model turns out to
    read item popularity and the store was loaded without it (the index holds every event).
    `on_epoch`: see `EpochCallback` (tuning reports each epoch's validation NDCG and prunes);
    `should_stop`: see `StopCheck`.
    `fit`: another loop that fits the Trainer (torchrun's data-parallel loop in
    `rechub_store.pipeline.distributed`); default `Trainer.fit` with `on_epoch`/`should_stop`.
    """
    cfg = replace(config.resolve(store.n_items), max_seq_len=config.max_seq_len or store.max_seq_len)
    torch.set_num_threads(max(1, int(threads or os.cpu_count() or 1)))
    _seed_everything(cfg.seed)
    schema = store.schema(cfg.max_seq_len)
    model = build_model(cfg.model, schema, embed_dim=cfg.embed_dim, **cfg.model_params)
    if (
        store.popularity_index is None
        and popularity_index is not None
        and reads_item_popularity(model, store)
    ):
        store.popularity_index = popularity_index()
    can_seq = hasattr(model, "sequence_outputs")
    if cfg.seq_train and not can_seq:
        raise UserError(f"--seq-train: {cfg.model} has no all-position training mode (gru4rec, sasrec have)")
    if cfg.seq_train and (source is not None or cfg.neg_sampler == "static"):
        raise UserError("--seq-train: not available with --streaming or static negatives")
    seq = can_seq and source is None and cfg.neg_sampler != "static" and cfg.seq_train is not False
    cfg = replace(cfg, seq_train=seq)
    if source is None:
        if "train" not in store.samples:
            raise UserError("no training samples loaded")
        train_samples = store.samples["train"]
        if seq:
            source = SequenceSource(train_samples, cfg.seed, window=int(cfg.max_seq_len))
        elif cfg.neg_mode == "full" and reads_item_popularity(model, store):
            source = InMemorySamples(train_samples, cfg.seed, by_time=True)  # see the module docstring
        else:
            source = InMemorySamples(train_samples, cfg.seed, bucket_len=cfg.max_seq_len)
    if len(source) == 0:
        raise UserError("features.samples_train is empty: ingest more events or lower --min-seq-len")
    valid = store.samples.get("valid")
    if valid is not None:
        valid = _valid_subset(valid, cfg.valid_users, cfg.seed)
    trainer = Trainer(model, store, cfg, source)
    if fit is not None:
        result = fit(trainer, valid, validation)
    else:
        result = trainer.fit(valid, validation, on_epoch, should_stop)
    return model, result, cfg


ValidationFor = Callable[[FeatureStore, TrainConfig], Validation]  # (store, resolved config) -> scoring


def train(
    con: duckdb.DuckDBPyConnection,
    config: TrainConfig,
    validation: ValidationFor | None = None,
    threads: int | None = None,
    tuned_from: str | None = None,
) -> ModelRunResult:
    """Train, register and save one model run; returns its summary. Failures are recorded as failed.

    `validation` builds the validation scoring for the loaded store (None: no validation);
    `threads`: torch threads, the warehouse's (`Warehouse.threads`) when called through the pipeline;
    `tuned_from`: the tuning study whose best parameters `config` carries (recorded on the run).
    """
    t0 = time.perf_counter()
    static = config.neg_sampler == "static"
    store = FeatureStore.load(
        con,
        config.max_seq_len,
        splits=("valid",) if config.streaming else ("train", "valid"),
        static_negatives=static,
        popularity_index=False,  # loaded by fit_model only for a model that reads item popularity
    )
    cfg = replace(config.resolve(store.n_items), max_seq_len=config.max_seq_len or store.max_seq_len)
    run_id = registry.new_run_id(cfg.model)
    schema = store.schema(cfg.max_seq_len)
    vocab = schema.vocab_sizes()
    registry.start_run(con, run_id, cfg.model, cfg.to_dict(), store.build_id, vocab, tuned_from)
    try:
        source = StreamingSamples(con, cfg.seed, static_negatives=static) if cfg.streaming else None
        model, fit, cfg = fit_model(
            store,
            cfg,
            source,
            threads=threads,
            popularity_index=lambda: ItemPopularityIndex.load(con, store.n_items),
            validation=None if validation is None else validation(store, cfg),
        )
        wall = time.perf_counter() - t0
        artifact = registry.save_artifact(con, run_id, model, cfg, store, fit.history)
        history = {"epochs": fit.history, "popularity_valid": fit.popularity}
        registry.finish_run(
            con, run_id, history, fit.best_epoch, fit.best_metric, str(artifact), wall, cfg.to_dict()
        )
    except BaseException as exc:
        registry.fail_run(
            con, run_id, f"{type(exc).__name__}: {exc}".splitlines()[0], time.perf_counter() - t0
        )
        raise
    return ModelRunResult.of(run_id, cfg, fit, artifact, wall, store.build_id, vocab)

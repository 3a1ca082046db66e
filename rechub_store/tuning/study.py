"""`tune`: an Optuna study over one model's search space, judged on the validation split only.

Why this shape:
- The feature store is loaded once with the train and valid splits; the test samples are never
  read, so tuning cannot leak the numbers that `evaluate` reports.
- Every trial trains with the study's seed (same initial weights, batches and negatives), so trials
  differ only in their parameters, and a rerun with the same seed and trial budget repeats the study:
  TPE is seeded and CPU training with a fixed thread count is deterministic.
- Trials report each epoch's validation NDCG@10 through the trainer's epoch callback; the pruner
  (median or successive halving) stops a trial that trails the others at the same epoch.
- The wall-clock budget is kept: no trial starts when its first epoch would not fit, a running trial
  stops before an epoch that would end past it (its best epoch so far is its value: status
  `stopped`), and a step that would start past it is not taken (an epoch cut short is not
  validated; a trial with no finished epoch has no value).
- The best trial's model is kept in memory, not retrained, and registered as a normal model run with
  `tuned_from` = the study, so `score`, `evaluate` and `nightly` use it like any other run.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any

import duckdb
import optuna

from rechub_store.data.readers import FeatureStore, ItemPopularityIndex
from rechub_store.errors import UserError
from rechub_store.models import SEARCH_SPACES
from rechub_store.models.space import Choice, Float, Int, Range
from rechub_store.pipeline.itemknn import fit_itemknn, fit_validated
from rechub_store.pipeline.train import fit_model
from rechub_store.ranking import itemknn
from rechub_store.training import registry
from rechub_store.training.config import FULL_SOFTMAX_MAX_ITEMS, NEIGHBOUR_MODELS, TrainConfig
from rechub_store.training.trainer import EVAL_K, progress_bar
from rechub_store.tuning import records
from rechub_store.warehouse import Warehouse

log = logging.getLogger(__name__)

PRUNERS = ("median", "halving", "none")
# every model `tune` searches: the trained models' spaces and item-kNN's (fitted in one pass)
SPACES: dict[str, dict[str, Range]] = {**SEARCH_SPACES, itemknn.ItemKNN.name: itemknn.SEARCH_SPACE}
TRAIN_FIELDS = frozenset(f.name for f in fields(TrainConfig))
# a trial that raises one of these is recorded as failed and the study goes on
TRIAL_ERRORS = (UserError, RuntimeError, ValueError)


def parse_duration(text: str | float | int, key: str = "--budget") -> float:
    """Seconds from `90`, `90s`, `30m`, `1h`, `1h30m` (a bare number is seconds)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        match = re.fullmatch(
            r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", str(text)
        )
        if not match or not any(match.groups()):
            raise UserError(f"{key}: expected a duration such as 600, 90s, 30m or 1h30m, got {text!r}")
        h, m, s = (float(g) if g else 0.0 for g in match.groups())
        seconds = h * 3600 + m * 60 + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise UserError(f"{key}: expected a positive duration, got {text!r}")
    return seconds


@dataclass(frozen=True)
class TuneConfig:
    """One study. At least one of `budget_seconds` and `max_trials` bounds it."""

    model: str = "sasrec"
    budget_seconds: float | None = 1800.0  # wall clock for the whole study
    max_trials: int | None = None
    seed: int = 42
    pruner: str = "median"  # median | halving | none
    # TrainConfig fields fixed for every trial (e.g. epochs, patience, valid_users); searched
    # parameters override them
    base: dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def check(self) -> TuneConfig:
        if self.model not in SPACES:
            raise UserError(f"--model: unknown model {self.model!r}; choose one of {', '.join(SPACES)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"--pruner: expected one of {', '.join(PRUNERS)}, got {self.pruner!r}")
        if self.budget_seconds is None and self.max_trials is None:
            raise UserError("tune: give a wall-clock budget (--budget) or a trial budget (--trials)")
        if self.max_trials is not None and self.max_trials < 1:
            raise UserError(f"--trials: expected an integer >= 1, got {self.max_trials}")
        if self.budget_seconds is not None and not self.budget_seconds > 0:
            raise UserError(f"--budget: expected a positive duration, got {self.budget_seconds}")
        # the model, the seed and progress are the study's own, not per-trial training options
        refused = (set(self.base) - TRAIN_FIELDS) | ({"model", "seed", "progress"} & set(self.base))
        if refused:
            raise UserError(f"tune: unknown training options {', '.join(sorted(refused))}")
        self.train_config({}).validate()
        return self

    def train_config(self, params: dict[str, Any]) -> TrainConfig:
        """The trial's TrainConfig: base options, then the sampled parameters on top."""
        train, model_params = split_params(params)
        base = dict(self.base)
        merged_model = {**base.pop("model_params", {}), **model_params}
        return TrainConfig(
            model=self.model, seed=self.seed, **{**base, **train}, model_params=merged_model, progress=False
        )


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Searched parameters -> (TrainConfig fields, model keyword arguments)."""
    train = {k: v for k, v in params.items() if k in TRAIN_FIELDS}
    return train, {k: v for k, v in params.items() if k not in TRAIN_FIELDS}


def space_for(model: str, n_items: int) -> dict[str, Range]:
    """The model's declared space, less what this catalogue rules out (full softmax above the size
    where the trainer would not choose it)."""
    space = dict(SPACES[model])
    mode = space.get("neg_mode")
    if isinstance(mode, Choice) and n_items > FULL_SOFTMAX_MAX_ITEMS:
        space["neg_mode"] = Choice(tuple(o for o in mode.options if o != "full"))
    return space


def suggest(trial: optuna.Trial, space: dict[str, Range]) -> dict[str, Any]:
    """Sample one point of `space` (define-by-run: `neg_ratio` only for sampled objectives)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if name == "neg_ratio" and params.get("neg_mode") == "full":
            continue
        if isinstance(spec, Float):
            params[name] = trial.suggest_float(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, Int):
            params[name] = trial.suggest_int(name, spec.low, spec.high, log=spec.log)
        elif isinstance(spec, Choice):
            params[name] = spec.decode(trial.suggest_categorical(name, spec.labels()))
        else:
            raise TypeError(f"search space {name!r}: unknown range {spec!r}")
    return params


def _pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        # compare from the 2nd epoch on, once 3 trials have finished
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


@dataclass
class TuneResult:
    """What a study produced (also what `rechub-store tune --json` prints)."""

    study_id: str
    model: str
    status: str
    n_trials: int
    trial_states: dict[str, int]
    best_trial: int | None
    best_value: float | None  # validation NDCG@10
    best_params: dict[str, Any] | None
    model_run_id: str | None
    popularity_valid: float  # validation NDCG@10 of the popularity baseline
    seconds: float
    budget_seconds: float | None
    trials: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def tune(
    target: Warehouse | duckdb.DuckDBPyConnection, cfg: TuneConfig, threads: int | None = None
) -> TuneResult:
    """Run one study and register its best model; every trial and the study are recorded in meta.
    Trial 0 is the defaults (recorded with empty params), the others are sampled. Torch uses the
    warehouse's thread count (`threads` for an open connection; None: every core)."""
    if isinstance(target, Warehouse):
        with target.session() as con:
            return tune(con, cfg, target.threads)
    con = target
    cfg.check()
    t0 = time.monotonic()
    deadline = None if cfg.budget_seconds is None else t0 + cfg.budget_seconds
    store = FeatureStore.load(con, None, splits=("train", "valid"), popularity_index=False)
    if len(store.samples.get("valid", ())) == 0:
        raise UserError("tune: features.samples_valid is empty: build the features with validation on")
    space = space_for(cfg.model, store.n_items)
    study_id = f"tune-{cfg.model}-{records.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    records.start_study(
        con,
        study_id,
        cfg.model,
        seed=cfg.seed,
        pruner=cfg.pruner,
        budget_seconds=cfg.budget_seconds,
        max_trials=cfg.max_trials,
        base_params=cfg.base,
        build_id=store.build_id,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.seed), pruner=_pruner(cfg.pruner)
    )
    pit_index: list[ItemPopularityIndex] = []

    def popularity_index() -> ItemPopularityIndex:  # loaded once, for the trials of models reading it
        if not pit_index:
            pit_index.append(ItemPopularityIndex.load(con, store.n_items))
        return pit_index[0]

    best: dict[str, Any] = {}
    states: dict[str, int] = {}
    popularity = 0.0
    first_epoch = 0.0  # the longest first epoch so far: a trial starts only if one fits in the budget
    try:
        with progress_bar(cfg.progress, f"tune {cfg.model}", "trials", cfg.max_trials) as bar:
            while cfg.max_trials is None or len(study.trials) < cfg.max_trials:
                if deadline is not None and time.monotonic() + first_epoch >= deadline:
                    break
                trial = study.ask()
                # trial 0 trains the defaults (nothing sampled: `train`'s own configuration plus the
                # study's base options), so a study never ends below them on validation
                params = {} if trial.number == 0 else suggest(trial, space)
                status, _value, fit_info = _run_trial(
                    con, study_id, trial, params, cfg, store, threads, deadline, popularity_index, best
                )
                states[status] = states.get(status, 0) + 1
                popularity = fit_info.get("popularity", popularity)
                first_epoch = max(first_epoch, fit_info.get("first_epoch", 0.0))
                if bar is not None:
                    info = f"trial {trial.number}: {status}"
                    if best:
                        info += f"  best valid NDCG@10 {best['value']:.4f} (trial {best['trial']})"
                    bar[0].update(bar[1], advance=1, info=info)
        model_run_id = _register(con, study_id, best, store) if best else None
        elapsed = time.monotonic() - t0
        records.finish_study(
            con,
            study_id,
            status="success" if best else "failed",
            n_trials=len(study.trials),
            best_trial=best.get("trial"),
            best_value=best.get("value"),
            best_params=best.get("params"),
            model_run_id=model_run_id,
            seconds=elapsed,
            error=None if best else "no trial completed",
        )
    except BaseException as exc:
        records.finish_study(
            con,
            study_id,
            status="failed",
            n_trials=len(study.trials),
            best_trial=None,
            best_value=None,
            best_params=None,
            model_run_id=None,
            seconds=time.monotonic() - t0,
            error=f"{type(exc).__name__}: {exc}".splitlines()[0],
        )
        raise
    if not best:
        raise UserError(f"tune: no trial of study {study_id} completed (see meta.tuning_trials)")
    return TuneResult(
        study_id=study_id,
        model=cfg.model,
        status="success",
        n_trials=len(study.trials),
        trial_states=states,
        best_trial=best["trial"],
        best_value=best["value"],
        best_params=best["params"],
        model_run_id=model_run_id,
        popularity_valid=popularity,
        seconds=round(elapsed, 3),
        budget_seconds=cfg.budget_seconds,
        trials=records.trials(con, study_id),
    )


def _run_trial(
    con: duckdb.DuckDBPyConnection,
    study_id: str,
    trial: optuna.Trial,
    params: dict[str, Any],
    cfg: TuneConfig,
    store: FeatureStore,
    threads: int | None,
    deadline: float | None,
    popularity_index: Any,
    best: dict[str, Any],
) -> tuple[str, float | None, dict[str, Any]]:
    """Train one trial, tell the study its outcome, record it; keeps the best model in `best`."""
    study = trial.study
    records.start_trial(con, study_id, trial.number, params)
    t0 = time.monotonic()
    curve: list[dict[str, Any]] = []
    stop: list[str] = []

    def on_epoch(epoch: int, metric: float, row: dict[str, Any]) -> bool:
        curve.append(
            {
                "epoch": epoch,
                f"valid_ndcg@{EVAL_K}": round(metric, 6),
                "train_loss": row["train_loss"],
                "seconds": round(time.monotonic() - t0, 3),
            }
        )
        trial.report(metric, epoch)
        if trial.should_prune():
            stop.append("pruned")
            return True
        if deadline is not None:
            epoch_seconds = (time.monotonic() - t0) / epoch
            if time.monotonic() + epoch_seconds > deadline:  # the next epoch would end past the budget
                stop.append("stopped")
                return True
        return False

    def out_of_time() -> bool:
        if deadline is None or time.monotonic() < deadline:
            return False
        stop.append("stopped")
        return True

    try:
        train_cfg = cfg.train_config(params)
        if cfg.model in NEIGHBOUR_MODELS:  # fitted in one pass: one "epoch", nothing to prune
            resolved = train_cfg.resolve(store.n_items)
            model, fit = fit_validated(store, resolved)
            curve.append({"epoch": 1, f"valid_ndcg@{EVAL_K}": fit.best_metric, "train_loss": None,
                          "seconds": round(time.monotonic() - t0, 3)})  # fmt: skip
        else:
            model, fit, resolved = fit_model(
                store,
                train_cfg,
                threads=threads,
                popularity_index=popularity_index,
                on_epoch=on_epoch,
                should_stop=out_of_time,
            )
    except TRIAL_ERRORS as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        records.finish_trial(
            con,
            study_id,
            trial.number,
            status="failed",
            curve=curve,
            value=None,
            best_epoch=None,
            seconds=time.monotonic() - t0,
            error=error,
        )
        log.info("trial %d failed: %s", trial.number, error)
        return "failed", None, {"first_epoch": curve[0]["seconds"] if curve else 0.0}
    seconds = time.monotonic() - t0
    status = stop[0] if stop else "complete"
    value: float | None = float(fit.best_metric) if fit.best_epoch else None
    if value is None:  # the budget ran out inside its first epoch: nothing to judge it by
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    elif status == "pruned":
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value)
        if not best or value > best["value"]:
            best.update(
                trial=trial.number,
                value=value,
                params=params,
                model=model,
                config=resolved,
                fit=fit,
                seconds=seconds,
            )
    records.finish_trial(
        con,
        study_id,
        trial.number,
        status=status,
        curve=curve,
        value=value,
        best_epoch=fit.best_epoch or None,
        seconds=seconds,
    )
    return (
        status,
        value,
        {
            "popularity": fit.popularity.get(f"ndcg@{EVAL_K}", 0.0),
            "first_epoch": curve[0]["seconds"] if curve else 0.0,
        },
    )


def _register(
    con: duckdb.DuckDBPyConnection, study_id: str, best: dict[str, Any], store: FeatureStore
) -> str:
    """The best trial's model as a successful model run, `tuned_from` = the study (item-kNN is
    refitted with the trial's parameters: deterministic, and one pass)."""
    cfg: TrainConfig = best["config"]
    if cfg.model in NEIGHBOUR_MODELS:
        return fit_itemknn(con, cfg, tuned_from=study_id).model_run_id
    fit = best["fit"]
    run_id = registry.new_run_id(cfg.model)
    schema = store.schema(cfg.max_seq_len)
    registry.start_run(con, run_id, cfg.model, cfg.to_dict(), store.build_id, schema.vocab_sizes(), study_id)
    try:
        artifact = registry.save_artifact(con, run_id, best["model"], cfg, store, fit.history)
        history = {
            "epochs": fit.history,
            "popularity_valid": fit.popularity,
            "tuning": {"study_id": study_id, "trial": best["trial"]},
        }
        registry.finish_run(
            con,
            run_id,
            history,
            fit.best_epoch,
            fit.best_metric,
            str(artifact),
            best["seconds"],
            cfg.to_dict(),
        )
    except BaseException as exc:
        registry.fail_run(con, run_id, f"{type(exc).__name__}: {exc}".splitlines()[0], best["seconds"])
        raise
    return run_id


def tuned_config(con: duckdb.DuckDBPyConnection, config: TrainConfig) -> tuple[TrainConfig, str]:
    """`config` with the newest successful study's best parameters of its model under it: the
    study's values replace the defaults, options set in `config` (a job file's `[train.params]`) win.
    Returns (config, study_id)."""
    study_id, params = records.last_best(con, config.model)
    train, model_params = split_params(params)
    defaults = TrainConfig(model=config.model)
    explicit = {f.name for f in fields(TrainConfig) if getattr(config, f.name) != getattr(defaults, f.name)}
    merged = {k: v for k, v in train.items() if k not in explicit}
    return replace(config, **merged, model_params={**model_params, **config.model_params}), study_id

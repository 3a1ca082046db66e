"""`rechub-store tune`: validation only, seeded, pruned, recorded, best model registered."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.readers import FeatureStore, Samples
from rechub_store.errors import UserError
from rechub_store.models.space import Float, Int
from rechub_store.pipeline.train import fit_model
from rechub_store.training.config import TrainConfig, neighbour_params
from rechub_store.training.registry import load_model
from rechub_store.tuning.study import SPACES, TuneConfig, parse_duration, tune, tuned_config
from rechub_store.warehouse import Warehouse

# small and quick: 3 epochs per trial, sequence model (all-position training)
BASE = {"epochs": 2, "patience": 5, "valid_users": 100}


def test_parse_duration() -> None:
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("30m") == 1800 and parse_duration("1h30m") == 5400 and parse_duration(600) == 600
    for bad in ("", "ten minutes", "0", "-5m"):
        with pytest.raises(UserError, match="--budget"):
            parse_duration(bad)


def test_study_reads_no_test_sample_and_repeats_with_its_seed(
    planted_warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sample reader is instrumented: tuning asks for train and valid, never test. Two studies
    with the same seed and trial budget sample the same parameters, score them the same and pick
    the same best trial; the best model is a registered run with tuned_from = its study."""
    requested: list[str] = []
    original = FeatureStore._samples

    def spy(con, split: str, static_negatives: bool) -> Samples:  # type: ignore[no-untyped-def]
        requested.append(split)
        return original(con, split, static_negatives)

    monkeypatch.setattr(FeatureStore, "_samples", staticmethod(spy))
    cfg = TuneConfig(model="gru4rec", budget_seconds=None, max_trials=3, seed=7, pruner="none", base=BASE,
                     progress=False)  # fmt: skip
    first = tune(planted_warehouse, cfg)
    second = tune(planted_warehouse, cfg)
    assert "test" not in requested and {"train", "valid"} <= set(requested)

    assert first.n_trials == second.n_trials == 3
    assert [t["params"] for t in first.trials] == [t["params"] for t in second.trials]
    assert [t["value"] for t in first.trials] == [t["value"] for t in second.trials]
    assert (first.best_trial, first.best_params) == (second.best_trial, second.best_params)
    assert first.best_value == max(t["value"] for t in first.trials)
    # trial 0 is the defaults (nothing sampled), the others are sampled points of the space
    assert first.trials[0]["params"] == {} and all(t["params"] for t in first.trials[1:])

    with planted_warehouse.session() as con:
        rows = con.execute(
            "SELECT study_id, count(*), count(*) FILTER (status = 'complete'), "
            "bool_and(json_array_length(curve) BETWEEN 1 AND 2) FROM meta.tuning_trials GROUP BY 1"
        ).fetchall()
        assert sorted(r[1:] for r in rows) == [(3, 3, True), (3, 3, True)]
        run = con.execute(
            "SELECT r.status, r.tuned_from, s.model_run_id, s.best_trial, s.status FROM meta.model_runs r "
            "JOIN meta.tuning_studies s ON s.study_id = r.tuned_from WHERE s.study_id = ?",
            [first.study_id],
        ).fetchone()
        assert run == ("success", first.study_id, first.model_run_id, first.best_trial, "success")
        loaded = load_model(con, first.model_run_id)
        assert loaded.model_name == "gru4rec"
        # a nightly with train.use_tuned = "last" takes the newest study's parameters; options set in
        # the job's [train.params] win
        config, study_id = tuned_config(con, TrainConfig(model="gru4rec", epochs=2))
    assert study_id == second.study_id and config.epochs == 2
    best = second.best_params  # {} when the defaults won
    assert config.lr == best.get("lr") and config.model_params.get("dropout") == best.get("dropout")


def test_epoch_callback_stops_training(planted_warehouse: Warehouse) -> None:
    with planted_warehouse.session() as con:
        store = FeatureStore.load(con, splits=("train", "valid"))
    seen: list[int] = []
    cfg = TrainConfig(model="sasrec", epochs=5, patience=5, progress=False)
    _, fit, _ = fit_model(store, cfg, on_epoch=lambda epoch, metric, row: seen.append(epoch) or epoch == 2)
    assert seen == [1, 2] and len(fit.history) == 2 and fit.stopped_by == "callback"


def test_pruned_trials_stop_early(planted_warehouse: Warehouse) -> None:
    """With the median pruner, trials that trail the earlier ones at the same epoch are cut short."""
    cfg = TuneConfig(model="sasrec", budget_seconds=None, max_trials=6, seed=1, pruner="median",
                     base={"epochs": 3, "patience": 10, "valid_users": 100}, progress=False)  # fmt: skip
    result = tune(planted_warehouse, cfg)
    pruned = [t for t in result.trials if t["status"] == "pruned"]
    assert pruned, [t["status"] for t in result.trials]
    assert all(1 <= len(t["curve"]) < 3 for t in pruned)
    assert all(len(t["curve"]) == 3 for t in result.trials if t["status"] == "complete")
    assert result.best_trial not in {t["trial"] for t in pruned}


def test_cli_tune_json_and_bad_options(planted_warehouse: Warehouse) -> None:
    runner = CliRunner()
    wh = ["--warehouse", str(planted_warehouse.path)]
    res = runner.invoke(
        app, [*wh, "tune", "--model", "youtubednn", "--trials", "2", "--budget", "none", "--epochs", "1",
              "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n_trials"] == 2 and out["model_run_id"].startswith("youtubednn-")
    res = runner.invoke(app, [*wh, "tune", "--budget", "soon"])
    assert res.exit_code == 2 and "error: --budget" in res.output
    res = runner.invoke(app, [*wh, "tune", "--model", "nope", "--trials", "1"])
    assert res.exit_code == 2 and "error: --model" in res.output


def test_check_rejects_unbounded_and_unknown(planted_warehouse: Warehouse) -> None:
    with pytest.raises(UserError, match="budget"):
        TuneConfig(budget_seconds=None, max_trials=None).check()
    with pytest.raises(UserError, match="unknown training options"):
        replace(TuneConfig(), base={"epoch": 3}).check()
    with pytest.raises(UserError, match="seed"):
        replace(TuneConfig(), base={"seed": 3}).check()


def test_stop_check_abandons_the_running_epoch(planted_warehouse: Warehouse) -> None:
    """Tuning's wall clock: a stop asked for mid-epoch ends training before the next step, without
    validating the cut epoch; the best finished epoch is kept."""
    with planted_warehouse.session() as con:
        store = FeatureStore.load(con, splits=("train", "valid"))
    steps: list[int] = []

    def stop() -> bool:
        steps.append(1)
        return len(fit_history) == 1 and len(steps) > 3  # stop inside the second epoch

    fit_history: list[int] = []
    cfg = TrainConfig(model="gru4rec", epochs=5, patience=5, batch_size=64, progress=False)
    _, fit, _ = fit_model(
        store, cfg, on_epoch=lambda epoch, metric, row: fit_history.append(epoch), should_stop=stop
    )
    assert fit.stopped_by == "stop check" and len(fit.history) == 1 and fit.best_epoch == 1


def test_itemknn_space_is_valid_and_tunes(planted_warehouse: Warehouse) -> None:
    """`tune --model itemknn`: every sampled point is a valid item-kNN configuration, each trial is
    one fitted and validated pass, and the best is registered as an item-kNN run whose validation
    NDCG@10 is the trial's value."""
    for name, spec in SPACES["itemknn"].items():
        assert isinstance(spec, Float | Int) and spec.low < spec.high, name
    cfg = TuneConfig(model="itemknn", budget_seconds=None, max_trials=4, seed=3, progress=False)
    result = tune(planted_warehouse, cfg)
    assert result.n_trials == 4 and result.trial_states == {"complete": 4}
    assert result.trials[0]["params"] == {}  # the defaults
    for t in result.trials[1:]:
        assert neighbour_params("itemknn", t["params"]) == t["params"] and len(t["curve"]) == 1, t
    assert len({json.dumps(t["params"], sort_keys=True) for t in result.trials}) == 4
    with planted_warehouse.session() as con:
        run = con.execute(
            "SELECT model, status, tuned_from, best_metric FROM meta.model_runs WHERE model_run_id = ?",
            [result.model_run_id],
        ).fetchone()
    assert run[:3] == ("itemknn", "success", result.study_id)
    assert run[3] == pytest.approx(result.best_value) and result.best_value > result.popularity_valid

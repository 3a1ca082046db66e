"""The one configuration path: every settings class refuses unknown keys and values of the wrong
type, and one formatter names the key where the value came from (job file or command line)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.config import AnnoySettings, _strip, keys, typed
from rechub_store.data.build import BuildParams
from rechub_store.errors import UserError
from rechub_store.jobs.config import (
    EvaluateSettings,
    GateSettings,
    InteractionsOptions,
    JobConfig,
    MovielensOptions,
    PublishSettings,
    ScoreSettings,
    Source,
    TrainSettings,
)
from rechub_store.training.config import ItemKNNParams, TrainConfig

# every settings class, with the fields it needs to be valid
CLASSES: dict[type, dict[str, Any]] = {
    AnnoySettings: {},
    BuildParams: {},
    TrainConfig: {},
    ItemKNNParams: {},
    Source: {"path": "x.csv", "user_col": "u", "item_col": "i", "time_col": "t"},
    InteractionsOptions: {},
    MovielensOptions: {},
    TrainSettings: {},
    ScoreSettings: {},
    EvaluateSettings: {},
    GateSettings: {},
    PublishSettings: {},
    JobConfig: {},
}
# a value of each scalar type that strict validation must refuse for it
WRONG = {int: ["3", 3.0, True], float: ["0.5", True], bool: [1, "true"], str: [3]}


def _scalar_fields() -> list[tuple[type, str, type]]:
    out = []
    for cls in CLASSES:
        for f in dataclasses.fields(cls):
            bare = _strip(typing.get_type_hints(cls, include_extras=True)[f.name])[0]
            if bare in WRONG:
                out.append((cls, f.name, bare))
    return out


def test_every_settings_class_refuses_unknown_keys() -> None:
    for cls, needed in CLASSES.items():
        assert typed(cls, needed, keys("t")) is not None  # valid as given
        with pytest.raises(UserError, match=r"^t: unknown key\(s\) nope, zz \(allowed: "):
            typed(cls, {**needed, "zz": 1, "nope": 2}, keys("t"))
        with pytest.raises(UserError, match=rf"^{cls.__name__}: unknown key\(s\) nope"):
            cls(**needed, nope=1)  # direct construction validates too


@pytest.mark.parametrize(("cls", "name", "kind"), _scalar_fields(), ids=lambda v: getattr(v, "__name__", v))
def test_scalar_values_are_never_converted(cls: type, name: str, kind: type) -> None:
    needed = CLASSES[cls]
    for wrong in WRONG[kind]:
        with pytest.raises(UserError, match=rf"^t\.{name}: expected .*, got {re.escape(repr(wrong))}$"):
            typed(cls, {**needed, name: wrong}, keys("t"))


def test_a_number_field_takes_an_integer() -> None:
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)
    assert typed(BuildParams, {"min_rating": 3}, keys("build")).min_rating == 3.0


def test_choices_bounds_and_rules_are_named_per_source(tmp_path: Path) -> None:
    cases = [
        ({"evaluate": {"ks": [10, 0]}}, "evaluate.ks: expected an integer >= 1, got 0"),
        ({"evaluate": {"baselines": ["knn"]}}, "evaluate.baselines: expected one of popularity"),
        ({"ingest": {"sources": [{"path": "x", "kind": "movielens", "min_time": "none"}]}},
         "ingest.sources[0].min_time: only interactions sources have a time window"),
        ({"train": {"model": "itemknn", "params": {"model_params": {"decay": 2}}}},
         "train.params.model_params.decay: expected a number in (0, 1], got 2"),
        ({"train": {"params": {"neg_mode": "pairwise", "in_batch": True}}},
         "train.params.in_batch: in-batch negatives need train.params.neg_mode listwise"),
        ({"build": {"neg_alpha": float("inf")}}, "build.neg_alpha: expected a finite number >= 0, got inf"),
        ({"build": {"validation": False, "min_seq_len": 1}},
         "build.min_seq_len: expected an integer >= 2 (a test target and one event of history), got 1"),
    ]  # fmt: skip
    for data, message in cases:
        with pytest.raises(UserError) as err:
            JobConfig.from_mapping(data)
        assert str(err.value).startswith(message), (str(err.value), message)
    with pytest.raises(UserError, match=re.escape("--in-batch: in-batch negatives need --neg-mode listwise")):
        TrainConfig(neg_mode="pairwise", in_batch=True)
    with pytest.raises(UserError, match=re.escape("--model-params.decay: expected a number in (0, 1]")):
        TrainConfig(model="itemknn", model_params={"decay": 0})


@pytest.mark.parametrize(
    ("table", "command"),
    [
        ("[train.params]\nepochs = 0", ["train", "--epochs", "0"]),
        ("[train.params]\nneg_ratio = -1", ["train", "--neg-ratio", "-1"]),
        ("[build]\nneg_ratio = 0", ["build-features", "--neg-ratio", "0"]),
        ("[score.annoy]\ntarget_recall = 1.5", ["score", "--target-recall", "1.5"]),
    ],
)
def test_a_bad_value_names_the_job_file_key_or_the_flag(tmp_path: Path, table: str, command: list) -> None:
    """The same bad value: `train.params.epochs` when it came from the job file (at load, before
    anything runs), `--epochs` when it came from the command line; same words after the key."""
    job = tmp_path / "job.toml"
    job.write_text(table)
    with pytest.raises(UserError) as err:
        JobConfig.load(job)
    section, key = table.split("]\n")[0].strip("["), table.split("\n")[1].split(" =")[0]
    from_file = str(err.value).removeprefix(f"job file {job}: ")
    assert from_file.startswith(f"{section}.{key}: expected ")
    res = CliRunner().invoke(app, ["--warehouse", str(tmp_path / "none" / "r.duckdb"), *command])
    flag = command[1]
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.strip() == f"error: {flag}: {from_file.split(': ', 1)[1]}"

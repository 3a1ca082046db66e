"""`rechub-store train` / `runs` through the real Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.warehouse import Warehouse

runner = CliRunner()


def test_cli_train_then_runs(planted_warehouse: Warehouse) -> None:
    wh = ["--warehouse", str(planted_warehouse.path)]
    res = runner.invoke(
        app,
        [
            *wh,
            "train",
            "--model",
            "gru4rec",
            "--epochs",
            "2",
            "--embed-dim",
            "8",
            "--neg-mode",
            "listwise",
            "--neg-ratio",
            "5",
            "--in-batch",
            "--seed",
            "3",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["status"] == "success" and out["params"]["seed"] == 3 and out["params"]["in_batch"] is True
    res = runner.invoke(app, [*wh, "runs", "--json"])
    assert res.exit_code == 0, res.output
    assert [r["model_run_id"] for r in json.loads(res.stdout)] == [out["model_run_id"]]
    res = runner.invoke(app, [*wh, "train", "--model", "dssm", "--epochs", "1", "--embed-dim", "8"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*wh, "runs"])
    assert res.exit_code == 0 and "dssm" in res.stdout and "gru4rec" in res.stdout


def test_cli_errors_are_one_line(planted_warehouse: Warehouse) -> None:
    wh = ["--warehouse", str(planted_warehouse.path)]
    res = runner.invoke(app, [*wh, "train", "--model", "bert4rec"])
    assert res.exit_code == 2 and "error: --model" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*wh, "train", "--neg-mode", "pairwise", "--in-batch"])
    assert res.exit_code == 2 and "--in-batch" in res.output


def test_cli_train_without_features_says_what_to_run(warehouse: Warehouse) -> None:
    res = runner.invoke(app, ["--warehouse", str(warehouse.path), "train", "--model", "sasrec"])
    assert res.exit_code == 2 and "no warehouse at" in res.output and not warehouse.root.exists()
    warehouse.connect().close()
    res = runner.invoke(app, ["--warehouse", str(warehouse.path), "train", "--model", "sasrec"])
    assert res.exit_code == 2 and "build-features" in res.output

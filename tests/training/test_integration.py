"""generate -> build-features -> `rechub-store train`: sequence models must beat popularity and YoutubeDNN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.generate import generate_into
from rechub_store.training.registry import load_model
from rechub_store.warehouse import Warehouse

pytestmark = pytest.mark.slow
MARGIN = 0.1


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    root: Path = tmp_path_factory.mktemp("generated")
    wh = Warehouse(root / "rechub.duckdb", threads=2)
    with wh.session() as con:
        generate_into(con, root / "files", n_users=600, n_items=200, n_events=10_000, seed=0)
        build_features(con, BuildParams(max_seq_len=10))
    return wh


def _train(wh: Warehouse, model: str, lr: str) -> dict:
    res = CliRunner().invoke(
        app,
        [
            "--warehouse",
            str(wh.path),
            "train",
            "--model",
            model,
            "--epochs",
            "4",
            "--lr",
            lr,
            "--batch-size",
            "256",
            "--embed-dim",
            "32",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_sequence_models_beat_popularity_and_youtubednn(generated: Warehouse) -> None:
    ytb = _train(generated, "youtubednn", "1e-2")
    gru = _train(generated, "gru4rec", "1e-2")
    sas = _train(generated, "sasrec", "1e-2")
    popularity = ytb["popularity_metric"]
    assert popularity == gru["popularity_metric"] == sas["popularity_metric"] > 0
    for seq in (gru, sas):
        assert seq["best_metric"] > popularity + MARGIN, (seq["model"], seq["best_metric"], popularity)
        assert seq["best_metric"] > ytb["best_metric"] + MARGIN, (
            seq["model"],
            seq["best_metric"],
            ytb["best_metric"],
        )
    with generated.session() as con:
        build_id = con.execute("SELECT build_id FROM meta.builds WHERE status = 'success'").fetchall()[0][0]
    assert sas["build_id"] == build_id
    loaded = load_model(generated)
    assert loaded.model_run_id == sas["model_run_id"] and loaded.build_id == build_id
    # the generated store has user/item attributes, tags and dense columns: DSSM uses them all
    assert {"user.gender", "item.category", "item.tags"} <= set(loaded.schema.vocab_sizes())

"""CLI: `rechub-store tune` (hyperparameter search on the validation split, best model registered)."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from rechub_store import api
from rechub_store.cli.app import app, print_json, warehouse_of
from rechub_store.cli.options import Json
from rechub_store.tuning.study import PRUNERS, SPACES, TuneConfig, parse_duration


@app.command("tune")
def tune_command(
    ctx: typer.Context,
    model: str = typer.Option("sasrec", "--model", "-m", help=f"Model: {' | '.join(SPACES)}."),
    budget: str = typer.Option(
        "30m", "--budget", help="Wall-clock budget: 600, 90s, 30m, 1h30m ('none': only --trials)."
    ),
    trials: int = typer.Option(
        None, "--trials", help="Trial budget (default: as many as the budget allows)."
    ),
    seed: int = typer.Option(42, help="Seed of the sampler and of every trial's training."),
    pruner: str = typer.Option(
        "median", help=f"Pruner fed by each epoch's valid NDCG@10: {' | '.join(PRUNERS)}."
    ),
    epochs: int = typer.Option(None, help="Maximum epochs per trial (default: the model's)."),
    patience: int = typer.Option(None, help="Early-stopping patience per trial (default: the trainer's)."),
    valid_users: int = typer.Option(
        None, help="Validate trials on a seeded sample of this many users (default: all)."
    ),
    as_json: Json = False,
) -> None:
    """Search the model's hyperparameters on the validation split (never test) and register the best
    trial's model as a model run (tuned_from = the study). Trials: meta.tuning_trials."""
    base = {
        k: v
        for k, v in (("epochs", epochs), ("patience", patience), ("valid_users", valid_users))
        if v is not None
    }
    config = TuneConfig(
        model=model,
        budget_seconds=None if budget.strip().lower() == "none" else parse_duration(budget),
        max_trials=trials,
        seed=seed,
        pruner=pruner,
        base=base,
        progress=not as_json,
    )
    result = api.tune(warehouse_of(ctx), config)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"study {result.study_id}")
    for col in ("trial", "status", "valid NDCG@10", "best epoch", "seconds", "params"):
        table.add_column(col)
    for t in result.trials:
        table.add_row(
            str(t["trial"]),
            t["status"],
            f"{t['value']:.4f}" if t["value"] is not None else "",
            str(t["best_epoch"] or ""),
            f"{t['seconds']:.1f}" if t["seconds"] is not None else "",
            json.dumps(t["params"], separators=(",", ":")),
        )
    console = Console()
    console.print(table)
    console.print(
        f"best trial {result.best_trial}: valid NDCG@10 {result.best_value:.4f} "
        f"(popularity {result.popularity_valid:.4f}), {result.n_trials} trials in {result.seconds:.0f}s\n"
        f"model run [bold]{result.model_run_id}[/] (tuned_from {result.study_id})"
    )

"""Your own SQL models (`--models-dir`): new tables, overrides, audits, the atomic swap, path safety,
the job-file key and the nightly fingerprint. The worked example is taken from the README as written."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from rechub_store.cli import app
from rechub_store.data import sqlmodels
from rechub_store.data.build import BuildParams, build_features
from rechub_store.data.movielens import ingest_movielens
from rechub_store.errors import UserError
from rechub_store.jobs import records
from rechub_store.jobs.config import JobConfig
from rechub_store.jobs.job import Nightly
from rechub_store.jobs.records import JobRecorder
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"


def readme_models(folder: Path) -> Path:
    """Write the README's example models (```sql blocks starting `-- my_models/<path>`) into folder."""
    blocks = re.findall(r"```sql\n-- my_models/(\S+\.sql)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert {path for path, _ in blocks} == {
        "features/user_genre_share.sql",
        "audits/user_genre_share_is_a_share.sql",
    }
    for path, body in blocks:
        write(folder, path, body)
    return folder


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def ingest_ml1m(con: duckdb.DuckDBPyConnection) -> None:
    ingest_movielens(con, FIXTURES / "ml-1m", max_reject_ratio=None)


def test_readme_example_builds_and_is_right(tmp_path: Path, warehouse: Warehouse) -> None:
    models = readme_models(tmp_path / "my_models")
    with warehouse.session() as con:
        ingest_ml1m(con)
        report = build_features(con, BuildParams(), user_dir=models)
        got = {
            (user, tag): (n, share)
            for user, tag, n, share in con.execute(
                "SELECT u.value, s.tag, s.n_events, s.share FROM features.user_genre_share s "
                "JOIN features.vocab_user_id u ON u.code = s.user_code"
            ).fetchall()
        }
        # the same numbers in plain Python, from staging's events and the raw genre lists
        events = con.execute("SELECT user_id, item_id FROM staging.interactions").fetchall()
        tags: dict[str, set[str]] = {}
        for item, tag in con.execute("SELECT item_id, tag FROM raw.item_tags").fetchall():
            tags.setdefault(item, set()).add(tag)
        (row,) = con.execute("SELECT models, params FROM meta.builds WHERE status = 'success'").fetchall()
    per_user = Counter(user for user, _ in events)
    pairs = Counter((user, tag) for user, item in events for tag in tags.get(item, ()))
    assert got.keys() == pairs.keys()
    for key, n in pairs.items():
        assert got[key][0] == n and got[key][1] == pytest.approx(n / per_user[key[0]])
    # by hand: user 1 rated Toy Story, Jumanji, Grumpier Old Men, Les Misérables, Wings of Courage
    assert got[("1", "Comedy")] == (2, pytest.approx(0.4)) and got[("1", "Drama")] == (1, pytest.approx(0.2))
    sources = {m.model: m.source for m in report.models}
    assert sources["features.user_genre_share"] == "user" and sources["features.events"] == "builtin"
    models_json, params = json.loads(row[0]), json.loads(row[1])
    assert models_json["features.user_genre_share"]["source"] == "user"
    assert params["models_dir"] == str(models.resolve())


def test_override_a_builtin_model_by_its_path(tmp_path: Path, warehouse: Warehouse) -> None:
    builtin = (SQL_DIR / "features" / "item_popularity.sql").read_text()
    mine = builtin.replace("select * from final", "select *, 'mine' as version from final")
    assert mine != builtin
    write(tmp_path, "features/item_popularity.sql", mine)
    with warehouse.session() as con:
        ingest_ml1m(con)
        report = build_features(con, BuildParams(), user_dir=tmp_path)
        assert con.execute("SELECT DISTINCT version FROM features.item_popularity").fetchall() == [("mine",)]
        # the models that read it (negatives, split report) were built after it, in the same build
        names = [m.model for m in report.models]
        assert names.index("features.item_popularity") < names.index("features.negatives_train")
        assert names.count("features.item_popularity") == 1
        build_features(con, BuildParams())  # without the folder: the built-in model again
        cols = [r[0] for r in con.execute("DESCRIBE features.item_popularity").fetchall()]
    assert "version" not in cols


def test_failing_user_audit_or_model_leaves_every_table_as_it_was(
    tmp_path: Path, warehouse: Warehouse
) -> None:
    models = readme_models(tmp_path / "my_models")
    with warehouse.session() as con:
        ingest_ml1m(con)
        build_features(con, BuildParams(), user_dir=models)
        before = {
            t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            for t in ("features.user_genre_share", "features.samples_test", "features.item_popularity")
        }
        # a wrong override of a built-in model is caught by the built-in audits
        write(models, "features/item_popularity.sql", "select 1 as item_code, 1 as n_events, 1 as n_train")
        with pytest.raises(UserError, match=r"audit \w+ failed \(sql/audits/"):
            build_features(con, BuildParams(min_seq_len=4), user_dir=models)
        (models / "features" / "item_popularity.sql").unlink()
        write(models, "audits/no_comedy.sql", "select * from features.user_genre_share where tag = 'Comedy'")
        with pytest.raises(UserError, match=r"audit no_comedy failed \(my_models/audits/no_comedy.sql\)"):
            build_features(con, BuildParams(min_seq_len=4), user_dir=models)
        (models / "audits" / "no_comedy.sql").unlink()
        write(models, "features/user_genre_share.sql", "select error('broken on purpose') as x")
        with pytest.raises(UserError, match=r"my_models/features/user_genre_share\.sql failed: .*broken on"):
            build_features(con, BuildParams(min_seq_len=4), user_dir=models)
        after = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in before}
        leftovers = con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '__tmp_%'")
        assert not leftovers.fetchall()
    assert after == before


def test_a_schema_of_your_own_is_created(tmp_path: Path, warehouse: Warehouse) -> None:
    write(tmp_path, "marts/top_items.sql", "select item_code, n_events from features.item_popularity")
    with warehouse.session() as con:
        ingest_ml1m(con)
        build_features(con, BuildParams(), user_dir=tmp_path)
        rows = con.execute("SELECT count(*) FROM marts.top_items").fetchone()[0]
        assert rows > 0
        build_features(con, BuildParams())  # without the folder: its tables stay as they are
        assert con.execute("SELECT count(*) FROM marts.top_items").fetchone()[0] == rows


@pytest.mark.parametrize(
    ("rel", "message"),
    [
        ("raw/interactions.sql", "may not create raw.interactions (schema raw holds ingested data)"),
        ("meta/builds.sql", "may not create meta.builds"),
        ("main/recommendations.sql", "may not create main.recommendations (schema main holds published"),
        ("MAIN/x.sql", "may not create main.x"),
        ("features/user-genre.sql", "'features.user-genre' is not a valid table name"),
        ("features/a.b.sql", "'features.a.b' is not a valid table name"),
        ("features/__tmp_x.sql", "is not a valid table name"),
        ("my schema/x.sql", "'my schema.x' is not a valid table name"),
        ("top_level.sql", "a model must live in a schema folder"),
        ("features/vocab_genre.sql", "features.vocab_* names are kept for the vocabulary views"),
        ("features/samples_train.sql", "is a built-in model (sql/features/splits/samples_train.sql)"),
        ("staging/deeper/events.sql", None),  # staging.events is a new table: fine
    ],
)
def test_model_paths_must_name_a_table_you_may_write(tmp_path: Path, rel: str, message: str | None) -> None:
    path = write(tmp_path, rel, "select 1 as x")
    if message is None:
        assert sqlmodels.discover(SQL_DIR, tmp_path)["staging.events"].user
        return
    with pytest.raises(UserError) as info:
        sqlmodels.discover(SQL_DIR, tmp_path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_two_user_files_for_one_table_and_nested_audits_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "marts/a/x.sql", "select 1 as x")
    write(tmp_path, "marts/b/x.sql", "select 2 as x")
    with pytest.raises(UserError, match=r"table marts\.x is already defined by"):
        sqlmodels.discover(SQL_DIR, tmp_path)
    with pytest.raises(UserError, match="audits are files directly in"):
        write(tmp_path, "audits/more/check.sql", "select 1 where false")
        sqlmodels.discover_audits(SQL_DIR, tmp_path)
    (tmp_path / "audits" / "more" / "check.sql").unlink()
    write(tmp_path, "audits/vocab_unique.sql", "select 1 as x where false")  # replaces the built-in one
    audits = sqlmodels.discover_audits(SQL_DIR, tmp_path)
    assert audits["vocab_unique"][0] == tmp_path / "audits" / "vocab_unique.sql"
    assert audits["point_in_time"][0] == SQL_DIR / "audits" / "point_in_time.sql"
    with pytest.raises(UserError, match=r"models folder .*missing not found"):
        sqlmodels.discover(SQL_DIR, tmp_path / "missing")


def test_cli_option_and_environment(
    tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    models = readme_models(tmp_path / "my_models")
    with warehouse.session() as con:
        ingest_ml1m(con)
    runner = CliRunner()
    base = ["--warehouse", str(warehouse.path)]
    res = runner.invoke(app, [*base, "--models-dir", str(models), "build-features", "--json"])
    assert res.exit_code == 0, res.output
    assert {m["model"]: m["source"] for m in json.loads(res.stdout)["models"]}[
        "features.user_genre_share"
    ] == "user"
    monkeypatch.setenv("RECHUB_MODELS_DIR", str(models))
    res = runner.invoke(app, [*base, "build-features", "--select", "user_genre_share", "--json"])
    assert res.exit_code == 0, res.output
    assert [m["model"] for m in json.loads(res.stdout)["models"]] == ["features.user_genre_share"]
    write(models, "raw/oops.sql", "select 1 as x")
    res = runner.invoke(app, [*base, "build-features"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    err = res.stderr.strip()  # (after the progress bar's blank line)
    assert err.startswith("error: ") and "raw/oops.sql" in err and "\n" not in err
    monkeypatch.setenv("RECHUB_MODELS_DIR", str(tmp_path / "nope"))
    res = runner.invoke(app, [*base, "build-features"])
    assert res.exit_code == 2 and "models folder" in res.stderr and "nope" in res.stderr


def _nightly_build(wh: Warehouse, job: JobConfig, run: str) -> tuple[str, dict]:
    """The nightly job's build step alone (with its job_runs bookkeeping): status and details."""
    nightly = Nightly(wh, job, run)
    with wh.session() as con:
        step = nightly._run_step(con, JobRecorder(con, run, job.name), "build")
    assert step.status != "failed", step.error
    return step.status, step.details


def test_job_file_models_dir_and_the_nightly_fingerprint(
    tmp_path: Path, warehouse: Warehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    # job_runs times have one-second resolution and these runs take less: a clock that ticks per
    # call keeps "the previous run" well defined, as nightly runs days apart are
    ticks = itertools.count()
    monkeypatch.setattr(
        records, "utcnow", lambda: dt.datetime(2026, 1, 1) + dt.timedelta(seconds=next(ticks))
    )
    jobs = tmp_path / "jobs"
    readme_models(jobs / "my_models")
    write(jobs, "nightly.toml", '[build]\nmodels_dir = "my_models"\n')  # relative to the job file
    job = JobConfig.load(jobs / "nightly.toml")
    assert job.models_dir == jobs / "my_models" and job.build is None  # parameters: as last built
    with warehouse.session() as con:
        ingest_ml1m(con)
        build_features(con, BuildParams(min_seq_len=4))
    status, details = _nightly_build(warehouse, job, "n1")
    assert status == "success" and details["models_dir"] == str((jobs / "my_models").resolve())
    with warehouse.session() as con:
        assert con.execute("SELECT count(*) FROM features.user_genre_share").fetchone()[0] > 0
        (params,) = con.execute("SELECT params FROM meta.builds ORDER BY started_at DESC LIMIT 1").fetchone()
        assert json.loads(params)["min_seq_len"] == 4
    assert _nightly_build(warehouse, job, "n2")[0] == "skipped"  # nothing changed
    share = jobs / "my_models" / "features" / "user_genre_share.sql"
    share.write_text(share.read_text().replace("select * from final", "select *, 1 as v2 from final"))
    assert _nightly_build(warehouse, job, "n3")[0] == "success"  # a user model changed: rebuild
    # no job file, no option: the folder of the last build is used again
    assert _nightly_build(warehouse, JobConfig(), "n4")[0] == "skipped"
    write(jobs / "my_models", "features/extra.sql", "select 1 as x")
    assert _nightly_build(warehouse, JobConfig(), "n5")[0] == "success"
    with warehouse.session() as con:
        assert con.execute("SELECT x FROM features.extra").fetchall() == [(1,)]
    with pytest.raises(UserError, match=r"build\.models_dir: expected a folder path"):
        JobConfig.from_mapping({"build": {"models_dir": 3}})

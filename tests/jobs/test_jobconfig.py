"""The job file: typed, rejects unknown keys and bad values naming the key, example file loads."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from rechub_store.errors import UserError
from rechub_store.jobs.config import JobConfig

JOBS_DIR = Path(__file__).resolve().parents[2] / "jobs"  # the repository's example job file


def test_example_job_file_loads() -> None:
    job = JobConfig.load(JOBS_DIR / "nightly.toml")
    assert job.name == "nightly"
    assert job.train.policy == "if-older-than" and job.train.max_age_days == 7
    assert job.score.k == 100 and job.score.annoy.target_recall == 0.95
    assert job.evaluate.ks == (10, 20, 50) and job.evaluate.indexes == ("annoy", "exact")
    assert job.sources[0].kind == "interactions" and job.sources[0].user_col == "user_id"
    assert job.base_dir == JOBS_DIR.resolve()
    from rechub_store.data.build import BuildParams

    BuildParams.from_mapping(job.build)  # the example's [build] and [train.params] are valid for their owners
    job.train.config()


def test_defaults_without_a_job_file() -> None:
    job = JobConfig()
    assert job.sources == () and job.build is None and job.train.policy == "if-missing"
    assert job.score.index == "annoy"
    # auto is decided by measuring each run (retrieval/autoindex.py); older files' exact_max_items still load
    auto = JobConfig.from_mapping({"score": {"index": "auto", "exact_max_items": 5}}).score
    assert auto.index == "auto"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[scroe]\nk = 1", "unknown key(s) scroe"),
        ("[score]\nkk = 1", "score: unknown key(s) kk"),
        ("[score]\nk = 0", "score.k: expected an integer"),
        ("[score]\nk = 'ten'", "score.k"),
        ("[score]\nindex = 'faiss'", "score.index: expected one of annoy, exact, auto"),
        ("[score.annoy]\ntarget_recall = 1.5", "score.annoy.target_recall"),
        ("[train]\npolicy = 'weekly'", "train.policy: expected one of"),
        ("[evaluate]\nks = []", "evaluate.ks"),
        ("[evaluate]\nsplits = ['train']", "evaluate.splits"),
        ("[publish]\nkeep_runs = 0", "publish.keep_runs"),
        (
            "[evaluate]\nseen_filter = 'history'",
            "evaluate.seen_filter: expected one of except-target, all, none",
        ),
        (
            "[evaluate]\nbaselines = ['knn']",
            "evaluate.baselines: expected one of popularity, itemknn, transition",
        ),
        ("[evaluate]\nlist_users = -1", "evaluate.list_users"),
        ("[score]\nexclude_seen = 'no'", "score.exclude_seen: expected true or false"),
        (
            "[[ingest.sources]]\npath = 'x.csv'\nuser_col = 'u'",
            "interactions sources need item_col, time_col",
        ),
        ("[[ingest.sources]]\nkind = 'kafka'\npath = 'x'", "ingest.sources[0].kind"),
        ("[job]\nname = 'a b'", "job.name"),
        ("score = 3", "score: expected a table"),
        ("[score\nk=1", "job file"),
    ],
)
def test_bad_job_files_fail_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        JobConfig.load(path)


def test_protocol_keys() -> None:
    default = JobConfig()
    assert default.evaluate.seen_filter == "except-target" and default.score.exclude_seen
    assert default.evaluate.baselines == ("popularity", "itemknn", "transition")
    job = JobConfig.from_mapping(
        {
            "score": {"exclude_seen": False},
            "evaluate": {"seen_filter": "all", "baselines": ["itemknn"], "list_users": 0},
        }
    )
    assert not job.score.exclude_seen and job.evaluate.seen_filter == "all"
    assert job.evaluate.baselines == ("itemknn",) and job.evaluate.list_users == 0
    legacy = JobConfig.from_mapping({"evaluate": {"popularity": False}})  # the older key still works
    assert legacy.evaluate.baselines == ("itemknn", "transition")


def test_missing_job_file() -> None:
    with pytest.raises(UserError, match="not found"):
        JobConfig.load(Path("/nonexistent/job.toml"))


def test_unknown_build_and_train_params_are_rejected_when_the_file_is_read() -> None:
    with pytest.raises(UserError, match=r"build: unknown key\(s\) max_seq_length"):
        JobConfig.from_mapping({"build": {"max_seq_length": 5}})
    with pytest.raises(UserError, match=r"train\.params: unknown key\(s\) epoch"):
        JobConfig.from_mapping({"train": {"params": {"epoch": 2}}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train.params]\nepochs = 0", "train.params.epochs: expected an integer >= 1, got 0"),
        ("[train.params]\nepochs = 'ten'", "train.params.epochs: expected an integer >= 1, got 'ten'"),
        ("[train.params]\nlr = -1.0", "train.params.lr: expected a positive number, got -1.0"),
        ("[train.params]\nin_batch = 1", "train.params.in_batch: expected true or false, got 1"),
        ("[train.params]\nneg_mode = 'fancy'",
         "train.params.neg_mode: expected one of pointwise, pairwise, listwise, full, got 'fancy'"),
        ("[train.params]\nmodel_params = 3", "train.params.model_params: expected a table, got 3"),
        # a misspelled model fails now, not on the night a retrain finally comes due
        ("[train]\npolicy = 'never'\nmodel = 'sasrek'",
         "train.model: expected one of dssm, youtubednn, gru4rec, sasrec, itemknn, got 'sasrek'"),
        ("[build]\nmin_seq_len = 1",
         "build.min_seq_len: expected an integer >= 3 (a test target, a validation target and one event"),
        ("[[ingest.sources]]\npath='x'\nuser_col='u'\nitem_col='i'\ntime_col='t'\noptions={typo=1}",
         "ingest.sources[0].options: unknown key(s) typo"),
        ("[[ingest.sources]]\npath='x'\nuser_col='u'\nitem_col='i'\ntime_col='t'\n"
         "options={max_reject_ratio=2}", "ingest.sources[0].options.max_reject_ratio"),
        ("[[ingest.sources]]\npath='x'\nuser_col='u'\nitem_col='i'\ntime_col='t'\nmin_time='yesterday'",
         "ingest.sources[0].min_time: expected an ISO date"),
        ("[publish.gates]\nrows_per_user = 'maybe'",
         "publish.gates.rows_per_user: expected one of fail, warn, off"),
        ("[publish.gates]\nmin_annoy_recall = 2", "publish.gates.min_annoy_recall"),
    ],
)  # fmt: skip
def test_train_params_and_other_values_are_checked_when_the_file_is_read(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(message)):
        JobConfig.load(path)


def test_time_window_keys_reach_the_ingest_call() -> None:
    job = JobConfig.from_mapping(
        {
            "ingest": {
                "sources": [
                    {"path": "x", "user_col": "u", "item_col": "i", "time_col": "t", "min_time": "none",
                     "max_time": dt.date(2030, 1, 1), "options": {"time_format": "seconds"}},
                ]
            }
        }
    )  # fmt: skip
    assert job.sources[0].ingest_options() == {
        "time_format": "seconds",
        "min_time": "none",
        "max_time": dt.date(2030, 1, 1),
    }


def test_targets_are_expanded_and_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rechub_store.jobs.job import run_nightly
    from rechub_store.warehouse import Warehouse

    monkeypatch.delenv("NO_SUCH_PG_URL", raising=False)
    wh = Warehouse(tmp_path / "wh" / "rechub.duckdb")
    job = JobConfig.from_mapping({"publish": {"targets": ["postgresql://u@h/db", "${NO_SUCH_PG_URL}"]}})
    with pytest.raises(
        UserError, match=r"publish.targets\[1\]: environment variable NO_SUCH_PG_URL is not set"
    ):
        run_nightly(wh, job)
    monkeypatch.setenv("NO_SUCH_PG_URL", "postgresql://rechub:retPw9@x@127.0.0.1:1/db")
    with pytest.raises(UserError) as err:
        run_nightly(wh, job)
    assert "publish.targets[1]: ambiguous URL" in str(err.value) and "%40" in str(err.value)
    assert "retPw9" not in str(err.value)
    assert not wh.root.exists(), "nothing was created: the job never started"


def test_source_globs_resolve_against_the_job_folder(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    for name in ("b.csv", "a.csv", "c.txt"):
        (tmp_path / "in" / name).write_text("x")
    job = JobConfig.from_mapping(
        {
            "ingest": {
                "sources": [
                    {"path": "in/*.csv", "user_col": "u", "item_col": "i", "time_col": "t"},
                    {"path": "in/none-*.csv", "user_col": "u", "item_col": "i", "time_col": "t"},
                ]
            }
        },
        base_dir=tmp_path,
    )
    assert [p.name for p in job.source_files(job.sources[0])] == ["a.csv", "b.csv"]
    assert job.source_files(job.sources[1]) == []


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    from rechub_store.jobs.config import expand_env

    monkeypatch.setenv("PGPW", "s3cr3t")
    assert expand_env("postgresql://u:${PGPW}@h/db", "publish.targets[0]") == "postgresql://u:s3cr3t@h/db"
    monkeypatch.delenv("PGPW")
    with pytest.raises(UserError, match=r"publish.targets\[0\]: environment variable PGPW is not set"):
        expand_env("postgresql://u:${PGPW}@h/db", "publish.targets[0]")

"""The nightly job file (`jobs/nightly.toml`), parsed into typed settings that reject mistakes.

cron runs unattended, so a typo in the job file must fail loudly before any work starts:
every table is a frozen dataclass, unknown keys and bad values raise `UserError` naming the
key (`score.annoy.target_recall: expected a number in (0, 1]`). Build and training
parameters are kept as plain mappings here and validated by their owners
(`BuildParams.from_mapping`, the trainer's config) when the job starts.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rechub_store.errors import UserError

RETRAIN_POLICIES = ("never", "always", "if-older-than", "if-missing")
INDEX_KINDS = ("annoy", "exact", "auto")
SOURCE_KINDS = ("interactions", "movielens")
SPLITS = ("test", "valid")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}{key}: expected a table")
    return value


def _int(value: Any, key: str, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UserError(f"{key}: expected an integer {bound}, got {value!r}")
    return value


def _float(value: Any, key: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo < value <= hi:
        raise UserError(f"{key}: expected a number in ({lo}, {hi}], got {value!r}")
    return float(value)


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise UserError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{key}: expected true or false, got {value!r}")
    return value


def _str_list(value: Any, key: str, choices: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{key}: expected a list of strings, got {value!r}")
    if choices:
        for v in value:
            _choice(v, key, choices)
    return tuple(value)


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{key}: expected a non-empty list of integers, got {value!r}")
    return tuple(_int(v, key) for v in value)


def _path(value: Any, key: str, base_dir: Path) -> Path:
    """A folder named in the job file: `~` expanded, relative paths against the job file's folder."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{key}: expected a folder path, got {value!r}")
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


def expand_env(text: str, key: str) -> str:
    """Replace `${VAR}` with the environment variable (secrets stay out of the job file)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise UserError(f"{key}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(sub, text)


@dataclass(frozen=True)
class Source:
    """One ingest source: files matching `path` (a glob; relative to the job file's folder)."""

    kind: str  # interactions | movielens
    path: str
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to the ingest function as keywords

    @classmethod
    def parse(cls, data: Any, where: str) -> Source:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a table")
        _check_keys(data, {f.name for f in fields(cls)}, where)
        kind = _choice(data.get("kind", "interactions"), f"{where}.kind", SOURCE_KINDS)
        path = data.get("path")
        if not isinstance(path, str) or not path:
            raise UserError(f"{where}.path: expected a file, folder or glob")
        cols = {}
        for name in ("user_col", "item_col", "time_col", "rating_col"):
            value = data.get(name)
            if value is not None and not isinstance(value, str):
                raise UserError(f"{where}.{name}: expected a column name, got {value!r}")
            cols[name] = value
        if kind == "interactions":
            missing = [n for n in ("user_col", "item_col", "time_col") if not cols[n]]
            if missing:
                raise UserError(f"{where}: interactions sources need {', '.join(missing)}")
        options = data.get("options", {})
        if not isinstance(options, dict):
            raise UserError(f"{where}.options: expected a table")
        return cls(kind=kind, path=path, options=dict(options), **cols)


@dataclass(frozen=True)
class TrainSettings:
    policy: str = "if-missing"  # never | always | if-older-than | if-missing
    max_age_days: float = 7.0  # for if-older-than
    model: str = "dssm"
    params: dict[str, Any] = field(default_factory=dict)  # trainer options (epochs, batch_size, ...)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TrainSettings:
        _check_keys(data, {"policy", "max_age_days", "model", "params"}, "train")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise UserError("train.params: expected a table")
        model = data.get("model", cls.model)
        if not isinstance(model, str):
            raise UserError(f"train.model: expected a model name, got {model!r}")
        return cls(
            policy=_choice(data.get("policy", cls.policy), "train.policy", RETRAIN_POLICIES),
            max_age_days=_float(
                data.get("max_age_days", cls.max_age_days), "train.max_age_days", 0.0, 3650.0
            ),
            model=model,
            params=dict(params),
        )


@dataclass(frozen=True)
class AnnoySettings:
    """Auto-tuning: raise search_k (then n_trees) until recall@k vs exact reaches target_recall."""

    n_trees: int = 10  # starting point
    max_trees: int = 160
    search_k: int | None = None  # fixed search_k: skips tuning when set
    target_recall: float = 0.95
    sample_users: int = 1000
    seed: int = 0

    @classmethod
    def parse(cls, data: dict[str, Any]) -> AnnoySettings:
        where = "score.annoy"
        _check_keys(data, {f.name for f in fields(cls)}, where)
        search_k = data.get("search_k")
        return cls(
            n_trees=_int(data.get("n_trees", cls.n_trees), f"{where}.n_trees"),
            max_trees=_int(data.get("max_trees", cls.max_trees), f"{where}.max_trees"),
            search_k=None if search_k is None else _int(search_k, f"{where}.search_k"),
            target_recall=_float(
                data.get("target_recall", cls.target_recall), f"{where}.target_recall", 0.0, 1.0
            ),
            sample_users=_int(data.get("sample_users", cls.sample_users), f"{where}.sample_users"),
            seed=_int(data.get("seed", cls.seed), f"{where}.seed", lo=0),
        )


@dataclass(frozen=True)
class ScoreSettings:
    k: int = 100
    index: str = "annoy"  # annoy | exact | auto (exact up to exact_max_items items, else annoy)
    exact_max_items: int = 20_000
    annoy: AnnoySettings = field(default_factory=AnnoySettings)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ScoreSettings:
        _check_keys(data, {"k", "index", "exact_max_items", "annoy"}, "score")
        return cls(
            k=_int(data.get("k", cls.k), "score.k", hi=10_000),
            index=_choice(data.get("index", cls.index), "score.index", INDEX_KINDS),
            exact_max_items=_int(
                data.get("exact_max_items", cls.exact_max_items), "score.exact_max_items", lo=0
            ),
            annoy=AnnoySettings.parse(_table(data, "annoy", "score.")),
        )

    def index_for(self, n_items: int) -> str:
        if self.index != "auto":
            return self.index
        return "exact" if n_items <= self.exact_max_items else "annoy"


@dataclass(frozen=True)
class EvaluateSettings:
    enabled: bool = True
    ks: tuple[int, ...] = (10, 20, 50)
    splits: tuple[str, ...] = ("test",)
    indexes: tuple[str, ...] = ("annoy", "exact")
    popularity: bool = True
    max_users: int | None = 100_000  # evaluate a seeded sample of this many users per split (None = all)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EvaluateSettings:
        _check_keys(data, {f.name for f in fields(cls)}, "evaluate")
        return cls(
            enabled=_bool(data.get("enabled", cls.enabled), "evaluate.enabled"),
            ks=_int_list(data.get("ks", list(cls.ks)), "evaluate.ks"),
            splits=_str_list(data.get("splits", list(cls.splits)), "evaluate.splits", SPLITS),
            indexes=_str_list(data.get("indexes", list(cls.indexes)), "evaluate.indexes", ("annoy", "exact")),
            popularity=_bool(data.get("popularity", cls.popularity), "evaluate.popularity"),
            max_users=_int(data["max_users"], "evaluate.max_users") if "max_users" in data else cls.max_users,
        )


@dataclass(frozen=True)
class PublishSettings:
    analytics: bool = True  # write analytics.duckdb beside the warehouse
    keep_runs: int = 30  # recommendations_history retention (runs)
    targets: tuple[str, ...] = ()  # SQLAlchemy URLs; `${VAR}` expanded from the environment at run time

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PublishSettings:
        _check_keys(data, {"analytics", "keep_runs", "targets"}, "publish")
        return cls(
            analytics=_bool(data.get("analytics", cls.analytics), "publish.analytics"),
            keep_runs=_int(data.get("keep_runs", cls.keep_runs), "publish.keep_runs"),
            targets=_str_list(data.get("targets", []), "publish.targets"),
        )


@dataclass(frozen=True)
class JobConfig:
    """A whole nightly job. `JobConfig()` is the no-job-file default: the warehouse's own data."""

    name: str = "nightly"
    sources: tuple[Source, ...] = ()
    build: dict[str, Any] | None = None  # None: reuse the last successful build's parameters
    models_dir: Path | None = None  # [build] models_dir: the user's own SQL models (absolute)
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)
    base_dir: Path = field(default_factory=Path.cwd)  # relative source paths are resolved here
    path: Path | None = None

    @classmethod
    def from_mapping(
        cls, data: dict[str, Any], base_dir: Path | None = None, path: Path | None = None
    ) -> JobConfig:
        _check_keys(data, {"job", "ingest", "build", "train", "score", "evaluate", "publish"}, "job file")
        job = _table(data, "job", "")
        _check_keys(job, {"name"}, "job")
        name = job.get("name", cls.name)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise UserError(f"job.name: expected letters, digits, '.', '_' or '-', got {name!r}")
        ingest = _table(data, "ingest", "")
        _check_keys(ingest, {"sources"}, "ingest")
        raw_sources = ingest.get("sources", [])
        if not isinstance(raw_sources, list):
            raise UserError("ingest.sources: expected an array of tables ([[ingest.sources]])")
        build = data.get("build")
        if build is not None and not isinstance(build, dict):
            raise UserError("build: expected a table")
        models_dir = None
        if build is not None and "models_dir" in build:
            build = dict(build)
            models_dir = _path(build.pop("models_dir"), "build.models_dir", base_dir or Path.cwd())
            if not build:  # only a models folder: build parameters as the last build had them
                build = None
        return cls(
            name=name,
            sources=tuple(Source.parse(s, f"ingest.sources[{i}]") for i, s in enumerate(raw_sources)),
            build=None if build is None else dict(build),
            models_dir=models_dir,
            train=TrainSettings.parse(_table(data, "train", "")),
            score=ScoreSettings.parse(_table(data, "score", "")),
            evaluate=EvaluateSettings.parse(_table(data, "evaluate", "")),
            publish=PublishSettings.parse(_table(data, "publish", "")),
            base_dir=base_dir or Path.cwd(),
            path=path,
        )

    @classmethod
    def load(cls, path: Path | str) -> JobConfig:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"job file {path} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"job file {path}: {exc}") from None
        try:
            return cls.from_mapping(data, base_dir=path.resolve().parent, path=path)
        except UserError as exc:
            raise UserError(f"job file {path}: {exc}") from None

    def source_files(self, source: Source) -> list[Path]:
        """The files a source names, sorted (a glob may match none: nothing new tonight)."""
        pattern = Path(os.path.expanduser(source.path))
        if not pattern.is_absolute():
            pattern = self.base_dir / pattern
        if any(ch in str(pattern) for ch in "*?["):
            anchor = Path(pattern.anchor)
            return sorted(p for p in anchor.glob(str(pattern.relative_to(anchor))) if p.exists())
        return [pattern] if pattern.exists() else []

"""The nightly job file (e.g. `jobs/nightly.toml`), parsed into typed settings that reject mistakes.

cron runs unattended, so a typo in the job file must fail loudly before any work starts:
every table is a frozen dataclass, unknown keys and bad values raise `UserError` naming the
key (`score.annoy.target_recall: expected a number in (0, 1]`). Build and training
parameters are kept as plain mappings here and checked by their owners (`BuildParams`, the
trainer's `TrainConfig`) when the file is read, the model name too even when no retrain is due;
`${VAR}`s in publish.targets are expanded and the URLs checked when the job starts (the nightly
then also connects to each target before taking the lock).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rechub_store.config import (
    BASELINE_NAMES,
    DEFAULT_SEEN_FILTER,
    INDEXES,
    SEEN_FILTERS,
    AnnoySettings,
    as_choice,
    as_float,
    as_int,
    check_keys,
)
from rechub_store.data.build import BuildParams
from rechub_store.data.encodings import normalize_encoding
from rechub_store.data.ingest import TIME_FORMATS, parse_time_bound
from rechub_store.errors import UserError
from rechub_store.publish.server import parse_url
from rechub_store.training.config import MODEL_DEFAULTS, TrainConfig

RETRAIN_POLICIES = ("never", "always", "if-older-than", "if-missing")
INDEX_KINDS = (*INDEXES, "auto")
SOURCE_KINDS = ("interactions", "movielens")
SPLITS = ("test", "valid")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}{key}: expected a table")
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
            as_choice(v, key, choices)
    return tuple(value)


def _int_list(value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not value:
        raise UserError(f"{key}: expected a non-empty list of integers, got {value!r}")
    return tuple(as_int(v, key) for v in value)


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


# Keyword options each source kind passes to its ingest function, and how each is checked.
SOURCE_OPTIONS: dict[str, tuple[str, ...]] = {
    "interactions": ("time_format", "delimiter", "encoding", "max_reject_ratio", "min_time", "max_time"),
    "movielens": ("encoding", "max_reject_ratio"),
}


def _check_options(options: dict[str, Any], kind: str, where: str) -> dict[str, Any]:
    """The source's `options` (and its time-window keys), checked by name and value before any work."""
    allowed = SOURCE_OPTIONS[kind]
    check_keys(options, set(allowed), f"{where}.options")
    out = dict(options)
    for key, value in options.items():
        name = f"{where}.options.{key}"
        if key == "time_format":
            as_choice(value, name, TIME_FORMATS)
        elif key == "max_reject_ratio":
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
                raise UserError(f"{name}: expected a number in [0, 1], got {value!r}")
        elif key in ("min_time", "max_time"):
            parse_time_bound(value, name)
        elif key == "encoding":
            try:
                normalize_encoding(value)
            except UserError as exc:
                raise UserError(f"{name}: {str(exc).removeprefix('--encoding: ')}") from None
        elif not isinstance(value, str) or not value:
            raise UserError(f"{name}: expected a non-empty string, got {value!r}")
    return out


@dataclass(frozen=True)
class Source:
    """One ingest source: files matching `path` (a glob; relative to the job file's folder)."""

    kind: str  # interactions | movielens
    path: str
    user_col: str | None = None
    item_col: str | None = None
    time_col: str | None = None
    rating_col: str | None = None
    # the accepted time window (see `rechub-store ingest interactions --min-time/--max-time`):
    # an ISO date or time (UTC unless an offset is given), or "none" for no bound;
    # default: not before 1990-01-01, not after the ingest time + 1 day
    min_time: Any = None
    max_time: Any = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to the ingest function as keywords

    @classmethod
    def parse(cls, data: Any, where: str) -> Source:
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a table")
        check_keys(data, {f.name for f in fields(cls)}, where)
        kind = as_choice(data.get("kind", "interactions"), f"{where}.kind", SOURCE_KINDS)
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
        options = _check_options(options, kind, where)
        window = {}
        for key in ("min_time", "max_time"):
            if key in data:
                if kind != "interactions":
                    raise UserError(f"{where}.{key}: only interactions sources have a time window")
                if key in options:
                    raise UserError(f"{where}: {key} is given both as a key and in options")
                window[key] = data[key]
                parse_time_bound(data[key], f"{where}.{key}")
        return cls(kind=kind, path=path, options=options, **window, **cols)

    def ingest_options(self) -> dict[str, Any]:
        """Keyword arguments for the ingest function: `options` plus the time window keys."""
        window = {k: getattr(self, k) for k in ("min_time", "max_time") if getattr(self, k) is not None}
        return {**self.options, **window}


@dataclass(frozen=True)
class TrainSettings:
    policy: str = "if-missing"  # never | always | if-older-than | if-missing
    max_age_days: float = 7.0  # for if-older-than
    model: str = "dssm"
    params: dict[str, Any] = field(default_factory=dict)  # trainer options (epochs, batch_size, ...)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> TrainSettings:
        check_keys(data, {"policy", "max_age_days", "model", "params"}, "train")
        params = data.get("params", {})
        if not isinstance(params, dict):
            raise UserError("train.params: expected a table")
        model = data.get("model", cls.model)
        if not isinstance(model, str):
            raise UserError(f"train.model: expected a model name, got {model!r}")
        settings = cls(
            policy=as_choice(data.get("policy", cls.policy), "train.policy", RETRAIN_POLICIES),
            max_age_days=as_float(
                data.get("max_age_days", cls.max_age_days), "train.max_age_days", 0.0, 3650.0
            ),
            model=model,
            params=dict(params),
        )
        settings.config()  # checked now, even when no retrain is due tonight
        return settings

    def config(self) -> Any:
        """The trainer's config (`TrainConfig`) for these settings; UserError naming the key."""
        if self.model not in MODEL_DEFAULTS:
            raise UserError(
                f"train.model: unknown model {self.model!r}; choose one of {', '.join(MODEL_DEFAULTS)}"
            )
        if "model" in self.params or "progress" in self.params:
            raise UserError("train.params: set the model with train.model; progress is not a job option")
        try:
            return TrainConfig.from_dict({"model": self.model, **self.params, "progress": False}).validate()
        except UserError as exc:
            raise UserError(f"train.params: {str(exc).removeprefix('--')}") from None


@dataclass(frozen=True)
class ScoreSettings:
    k: int = 100
    index: str = "annoy"  # annoy | exact | auto (exact up to exact_max_items items, else annoy)
    exact_max_items: int = 20_000
    exclude_seen: bool = True  # false: re-consumption domains (repeats may be recommended)
    annoy: AnnoySettings = field(default_factory=AnnoySettings)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> ScoreSettings:
        check_keys(data, {"k", "index", "exact_max_items", "exclude_seen", "annoy"}, "score")
        return cls(
            k=as_int(data.get("k", cls.k), "score.k", hi=10_000),
            index=as_choice(data.get("index", cls.index), "score.index", INDEX_KINDS),
            exact_max_items=as_int(
                data.get("exact_max_items", cls.exact_max_items), "score.exact_max_items", lo=0
            ),
            exclude_seen=_bool(data.get("exclude_seen", cls.exclude_seen), "score.exclude_seen"),
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
    popularity: bool = True  # kept for older job files: false = leave popularity out of `baselines`
    baselines: tuple[str, ...] = BASELINE_NAMES
    seen_filter: str = DEFAULT_SEEN_FILTER  # except-target | all | none (ranking.protocol)
    max_users: int | None = 100_000  # evaluate a seeded sample of this many users per split (None = all)
    list_users: int = 10_000  # users whose production lists get beyond-accuracy metrics (0 = none)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> EvaluateSettings:
        check_keys(data, {f.name for f in fields(cls)}, "evaluate")
        popularity = _bool(data.get("popularity", cls.popularity), "evaluate.popularity")
        baselines = _str_list(
            data.get("baselines", list(cls.baselines)), "evaluate.baselines", BASELINE_NAMES
        )
        return cls(
            enabled=_bool(data.get("enabled", cls.enabled), "evaluate.enabled"),
            ks=_int_list(data.get("ks", list(cls.ks)), "evaluate.ks"),
            splits=_str_list(data.get("splits", list(cls.splits)), "evaluate.splits", SPLITS),
            indexes=_str_list(data.get("indexes", list(cls.indexes)), "evaluate.indexes", INDEXES),
            popularity=popularity,
            baselines=tuple(b for b in baselines if popularity or b != "popularity"),
            seen_filter=as_choice(
                data.get("seen_filter", cls.seen_filter), "evaluate.seen_filter", SEEN_FILTERS
            ),
            max_users=as_int(data["max_users"], "evaluate.max_users")
            if "max_users" in data
            else cls.max_users,
            list_users=as_int(data.get("list_users", cls.list_users), "evaluate.list_users", lo=0),
        )


GATE_MODES = ("fail", "warn", "off")


@dataclass(frozen=True)
class GateSettings:
    """Checks a run must pass before anything is published (`[publish.gates]`). Each gate is
    `fail` (the run fails, nothing is published), `warn` (logged and recorded) or `off`."""

    rows_per_user: str = "fail"  # every scored user got min(k, unseen candidates) rows
    annoy_recall: str = "fail"  # annoy recall@k vs exact, measured this run, >= min_annoy_recall
    min_annoy_recall: float = 0.9
    metrics: str = "warn"  # no metric more than max_metric_drop below the previous published run
    max_metric_drop: float = 0.2  # relative (0.2 = a 20 % drop), like-for-like rows only

    @classmethod
    def parse(cls, data: dict[str, Any]) -> GateSettings:
        where = "publish.gates"
        check_keys(data, {f.name for f in fields(cls)}, where)

        def mode(key: str) -> str:
            return as_choice(data.get(key, getattr(cls, key)), f"{where}.{key}", GATE_MODES)

        def share(key: str) -> float:
            return as_float(data.get(key, getattr(cls, key)), f"{where}.{key}", 0.0, 1.0)

        return cls(
            rows_per_user=mode("rows_per_user"),
            annoy_recall=mode("annoy_recall"),
            min_annoy_recall=share("min_annoy_recall"),
            metrics=mode("metrics"),
            max_metric_drop=share("max_metric_drop"),
        )


@dataclass(frozen=True)
class PublishSettings:
    analytics: bool = True  # write analytics.duckdb beside the warehouse
    keep_runs: int = 30  # recommendations_history retention (runs)
    targets: tuple[str, ...] = ()  # SQLAlchemy URLs; `${VAR}` expanded from the environment at run time
    gates: GateSettings = field(default_factory=GateSettings)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> PublishSettings:
        check_keys(data, {"analytics", "keep_runs", "targets", "gates"}, "publish")
        return cls(
            analytics=_bool(data.get("analytics", cls.analytics), "publish.analytics"),
            keep_runs=as_int(data.get("keep_runs", cls.keep_runs), "publish.keep_runs"),
            targets=_str_list(data.get("targets", []), "publish.targets"),
            gates=GateSettings.parse(_table(data, "gates", "publish.")),
        )

    def resolved_targets(self) -> list[tuple[str, str]]:
        """(key, URL) per target with `${VAR}` expanded and the URL checked (an unset variable or
        an ambiguous URL is a one-line error naming the key, e.g. `publish.targets[1]`)."""
        out = []
        for i, raw in enumerate(self.targets):
            key = f"publish.targets[{i}]"
            url = expand_env(raw, key)
            parse_url(url, key)
            out.append((key, url))
        return out


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
        check_keys(data, {"job", "ingest", "build", "train", "score", "evaluate", "publish"}, "job file")
        job = _table(data, "job", "")
        check_keys(job, {"name"}, "job")
        name = job.get("name", cls.name)
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise UserError(f"job.name: expected letters, digits, '.', '_' or '-', got {name!r}")
        ingest = _table(data, "ingest", "")
        check_keys(ingest, {"sources"}, "ingest")
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
        if build is not None:
            try:
                BuildParams.from_mapping(build)
            except UserError as exc:
                raise UserError(f"build: {exc}") from None
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

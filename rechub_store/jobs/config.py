"""The nightly job file (e.g. `jobs/nightly.toml`), parsed into typed settings that reject mistakes.

cron runs unattended, so a typo in the job file must fail loudly before any work starts: every
table is a settings class (`rechub_store.config`), so unknown keys and bad values raise `UserError`
naming the key as written in the file (`score.annoy.target_recall: expected a number in (0, 1]`).
The `[build]` table and `[train.params]` are checked by their owners' classes (`BuildParams`,
`TrainConfig`) when the file is read, named `build.<key>` and `train.params.<key>`, the model name
too even when no retrain is due; `${VAR}`s in publish.targets are expanded and the URLs checked
when the job starts (the nightly then also connects to each target before taking the lock).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from rechub_store.config import (
    BASELINE_NAMES,
    DEFAULT_SEEN_FILTER,
    INDEXES,
    SEEN_FILTERS,
    AnnoySettings,
    Bool,
    Float,
    Int,
    Invalid,
    Loc,
    Str,
    check_nested,
    keys,
    settings_class,
    typed,
)
from rechub_store.data.build import BuildParams
from rechub_store.data.encodings import normalize_encoding
from rechub_store.data.ingest import TIME_FORMATS, parse_time_bound
from rechub_store.errors import UserError
from rechub_store.publish.server import parse_url
from rechub_store.training.config import TrainConfig

RETRAIN_POLICIES = ("never", "always", "if-older-than", "if-missing")
INDEX_KINDS = (*INDEXES, "auto")
SOURCE_KINDS = ("interactions", "movielens")
SPLITS = ("test", "valid")
GATE_MODES = ("fail", "warn", "off")

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(text: str, key: str) -> str:
    """Replace `${VAR}` with the environment variable (secrets stay out of the job file)."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise UserError(f"{key}: environment variable {name} is not set")
        return os.environ[name]

    return _ENV_REF.sub(sub, text)


def _time_bound(value: Any) -> Any:
    """A time-window bound as written (parsed by the ingest step); its error words if it is not one."""
    try:
        parse_time_bound(value, "")
    except UserError as exc:
        raise ValueError(str(exc).removeprefix(": ")) from None
    return value


def _encoding(value: str) -> str:
    try:
        normalize_encoding(value)
    except UserError as exc:
        raise ValueError(str(exc).removeprefix("--encoding: ")) from None
    return value


NonEmpty = Annotated[Str, Field(min_length=1)]
Share = Annotated[Float, Field(ge=0.0, le=1.0)]
Positive = Annotated[Int, Field(ge=1)]
Encoding = Annotated[Str, AfterValidator(_encoding)]
# the accepted time window (see `rechub-store ingest interactions --min-time/--max-time`): an ISO date
# or time (UTC unless an offset is given), or "none" for no bound; kept as written
TimeBound = Annotated[Any, AfterValidator(_time_bound)]


@settings_class
class InteractionsOptions:
    """`options` of an interactions source: keyword arguments of `ingest_interactions`."""

    time_format: Literal[TIME_FORMATS] | None = None
    delimiter: NonEmpty | None = None
    encoding: Encoding | None = None
    max_reject_ratio: Share | None = None
    min_time: TimeBound = None
    max_time: TimeBound = None


@settings_class
class MovielensOptions:
    """`options` of a movielens source."""

    encoding: Encoding | None = None
    max_reject_ratio: Share | None = None


# The options each source kind passes to its ingest function as keywords.
SOURCE_OPTIONS: dict[str, type] = {"interactions": InteractionsOptions, "movielens": MovielensOptions}


@settings_class
class Source:
    """One ingest source: files matching `path` (a glob; relative to the job file's folder)."""

    path: Annotated[Str, Field(min_length=1, description="a file, folder or glob")]
    kind: Literal[SOURCE_KINDS] = "interactions"
    user_col: Annotated[Str | None, Field(description="a column name")] = None
    item_col: Annotated[Str | None, Field(description="a column name")] = None
    time_col: Annotated[Str | None, Field(description="a column name")] = None
    rating_col: Annotated[Str | None, Field(description="a column name")] = None
    # default window: not before 1990-01-01, not after the ingest time + 1 day
    min_time: TimeBound = None
    max_time: TimeBound = None
    options: dict[Str, Any] = field(default_factory=dict)  # passed to the ingest function as keywords

    @model_validator(mode="after")
    def _per_kind(self) -> Source:
        if self.kind == "interactions":
            missing = [n for n in ("user_col", "item_col", "time_col") if not getattr(self, n)]
            if missing:
                raise Invalid(None, f"interactions sources need {', '.join(missing)}")
        check_nested(SOURCE_OPTIONS[self.kind], self.options, "options")
        for key in ("min_time", "max_time"):
            if getattr(self, key) is not None:
                if self.kind != "interactions":
                    raise Invalid(key, "only interactions sources have a time window")
                if key in self.options:
                    raise Invalid(None, f"{key} is given both as a key and in options")
        return self

    def ingest_options(self) -> dict[str, Any]:
        """Keyword arguments for the ingest function: `options` plus the time window keys."""
        window = {k: getattr(self, k) for k in ("min_time", "max_time") if getattr(self, k) is not None}
        return {**self.options, **window}


@settings_class
class TrainSettings:
    policy: Literal[RETRAIN_POLICIES] = "if-missing"  # never | always | if-older-than | if-missing
    max_age_days: Annotated[Float, Field(gt=0.0, le=3650.0)] = 7.0  # for if-older-than
    model: Str = "dssm"  # checked with the params by `config()` (TrainConfig's model names)
    params: dict[Str, Any] = field(default_factory=dict)  # trainer options (epochs, batch_size, ...)
    # "last": retrain with the best parameters of the model's newest successful `tune` study
    # (meta.tuning_studies) under `params`; "none": the trainer's defaults under `params`
    use_tuned: Literal["none", "last"] = "none"

    @model_validator(mode="after")
    def _not_in_params(self) -> TrainSettings:
        if "model" in self.params or "progress" in self.params:
            raise Invalid("params", "set the model with {model}; progress is not a job option")
        return self

    def config(self) -> TrainConfig:
        """The trainer's config for these settings; a UserError names `train.model` or
        `train.params.<key>`."""
        return TrainConfig.from_dict(
            {"model": self.model, **self.params, "progress": False}, _train_keys
        ).validate(_train_keys)


def _train_keys(loc: Loc) -> str:
    """Where a TrainConfig value came from in the job file: `train.model` or `train.params.<key>`."""
    return "train.model" if loc[:1] == ("model",) else keys("train.params")(loc)


@settings_class
class ScoreSettings:
    k: Annotated[Int, Field(ge=1, le=10_000)] = 100
    index: Literal[INDEX_KINDS] = "annoy"  # annoy | exact | auto (the faster on a sample of this run's users)
    # read for older job files; auto no longer uses a fixed item count
    exact_max_items: Annotated[Int, Field(ge=0)] = 20_000
    exclude_seen: Bool = True  # false: re-consumption domains (repeats may be recommended)
    annoy: AnnoySettings = field(default_factory=AnnoySettings)


@settings_class
class EvaluateSettings:
    enabled: Bool = True
    ks: Annotated[tuple[Positive, ...], Field(min_length=1)] = (10, 20, 50)
    splits: tuple[Literal[SPLITS], ...] = ("test",)
    indexes: tuple[Literal[INDEXES], ...] = ("annoy", "exact")
    popularity: Bool = True  # kept for older job files: false = leave popularity out of `baselines`
    baselines: tuple[Literal[BASELINE_NAMES], ...] = BASELINE_NAMES
    seen_filter: Literal[SEEN_FILTERS] = DEFAULT_SEEN_FILTER  # except-target | all | none (ranking.protocol)
    max_users: Positive | None = 100_000  # evaluate a seeded sample of this many users per split (None = all)
    list_users: Annotated[Int, Field(ge=0)] = (
        10_000  # users whose lists get beyond-accuracy metrics (0 = none)
    )

    @model_validator(mode="after")
    def _older_popularity_key(self) -> EvaluateSettings:
        if not self.popularity:
            object.__setattr__(self, "baselines", tuple(b for b in self.baselines if b != "popularity"))
        return self


Gate = Literal[GATE_MODES]
Rate = Annotated[Float, Field(gt=0.0, le=1.0)]


@settings_class
class GateSettings:
    """Checks a run must pass before anything is published (`[publish.gates]`). Each gate is
    `fail` (the run fails, nothing is published), `warn` (logged and recorded) or `off`."""

    rows_per_user: Gate = "fail"  # every scored user got min(k, unseen candidates) rows
    annoy_recall: Gate = "fail"  # annoy recall@k vs exact, measured this run, >= min_annoy_recall
    min_annoy_recall: Rate = 0.9
    metrics: Gate = "warn"  # no metric more than max_metric_drop below the previous published run
    max_metric_drop: Rate = 0.2  # relative (0.2 = a 20 % drop), like-for-like rows only


@settings_class
class PublishSettings:
    analytics: Bool = True  # write analytics.duckdb beside the warehouse
    keep_runs: Positive = 30  # recommendations_history retention (runs)
    report: Bool = True  # write the run's HTML page (reports/<run_id>.html) and refresh reports/index.html
    targets: tuple[Str, ...] = ()  # SQLAlchemy URLs; `${VAR}` expanded from the environment at run time
    gates: GateSettings = field(default_factory=GateSettings)

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


@settings_class
class _JobTable:
    name: Annotated[
        Str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="1-64 letters, digits, '.', '_' or '-'")
    ] = "nightly"


@settings_class
class _IngestTable:
    sources: tuple[Source, ...] = ()  # [[ingest.sources]]


@settings_class
class _BuildTable(BuildParams):
    """`[build]`: the build parameters and the user's SQL models folder."""

    models_dir: Annotated[Str | None, Field(pattern=r"\S", description="a folder path")] = None

    def folder(self, base_dir: Path) -> Path | None:
        """`models_dir` with `~` expanded, relative to the job file's folder."""
        if self.models_dir is None:
            return None
        path = Path(os.path.expanduser(self.models_dir))
        return path if path.is_absolute() else base_dir / path


@settings_class
class _JobFile:
    """The job file's tables, as written."""

    job: _JobTable = field(default_factory=_JobTable)
    ingest: _IngestTable = field(default_factory=_IngestTable)
    build: _BuildTable | None = None
    train: TrainSettings = field(default_factory=TrainSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    publish: PublishSettings = field(default_factory=PublishSettings)


@settings_class
class JobConfig:
    """A whole nightly job. `JobConfig()` is the no-job-file default: the warehouse's own data."""

    name: Str = "nightly"
    sources: tuple[Source, ...] = ()
    build: dict[Str, Any] | None = None  # None: reuse the last successful build's parameters
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
        """The job file's tables, every value checked (build and training parameters too)."""
        file = typed(_JobFile, data, keys(""))
        base_dir = base_dir or Path.cwd()
        build = None
        models_dir = None
        if file.build is not None:
            build = {k: v for k, v in data["build"].items() if k != "models_dir"}
            models_dir = file.build.folder(base_dir)
            if models_dir is not None and not build:  # only a folder: parameters as the last build had
                build = None
        job = cls(
            name=file.job.name,
            sources=file.ingest.sources,
            build=build,
            models_dir=models_dir,
            train=file.train,
            score=file.score,
            evaluate=file.evaluate,
            publish=file.publish,
            base_dir=base_dir,
            path=path,
        )
        job.train.config()  # checked now, even when no retrain is due tonight
        return job

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

    def build_params(self) -> BuildParams | None:
        """The `[build]` table as BuildParams (None: reuse the last build's); UserError naming
        `build.<key>`."""
        return None if self.build is None else BuildParams.from_mapping(self.build, keys("build"))

    def source_files(self, source: Source) -> list[Path]:
        """The files a source names, sorted (a glob may match none: nothing new tonight)."""
        pattern = Path(os.path.expanduser(source.path))
        if not pattern.is_absolute():
            pattern = self.base_dir / pattern
        if any(ch in str(pattern) for ch in "*?["):
            anchor = Path(pattern.anchor)
            return sorted(p for p in anchor.glob(str(pattern.relative_to(anchor))) if p.exists())
        return [pattern] if pattern.exists() else []

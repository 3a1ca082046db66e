"""The SQL model runner: `sql/**/*.sql` -> tables, in dependency order, swapped in atomically.

Each model is one SELECT; its path names its table (`sql/<schema>/[<stage>/]<table>.sql`).
Dependencies come from the model text itself (references to other models' `schema.table`
names outside comments and strings), so nobody keeps an order by hand.

A user's own models folder (`--models-dir`, laid out like `sql/`) joins the same DAG: its models
become new tables, or replace the built-in model at the same relative path; its
`audits/*.sql` run beside the built-in audits (same file name = replaces that audit). User
models may create tables in `staging`, `features` or schemas of their own, never in `raw`,
`meta` or `main` (ingested data, bookkeeping and published results).

Every model of a build is first created as `<schema>.__tmp_<table>`, with references to the
other models of the same build rewritten to their temporary names. Audits (`sql/audits/*.sql`,
queries that must return no rows) then run against those new tables. Only when everything
succeeded are all old tables dropped and the new ones renamed, in one transaction: a failed
build leaves every table of the previous build readable and unchanged.

A model too big to build in one query (its joins and aggregates would not fit in memory) can
be built in partitions, like dbt's microbatches. The header line

    -- partition: user_code, one per 10000000 rows of features.samples_train

makes the runner choose n = ceil(rows of that model / 10000000) (at least 1; the model's new
version when it is part of the build), create the table from partition 0 and INSERT partitions
1..n-1, with the DuckDB variables `partition` and `n_partitions` set for each pass. The model
itself must filter its big inputs, e.g. `where user_code % getvariable('n_partitions') in
(getvariable('partition'))`, so that each pass reads 1/n of them and the union of the passes is
exactly the unpartitioned result (rows of one partition must not depend on other partitions'
inputs). `in (...)` rather than `=`, because DuckDB estimates `x % n = p` like `x = p` (one row
per distinct x) and may then build a join's hash table on the big side. Outside a partitioned
model `partition` = 0 and `n_partitions` = 1.

A model that reads its own previous version (`-- self: (col TYPE, ...)`, stable vocabularies) may
name a seed, `-- seed: seeds/<file>.sql`: a SELECT under the models folder's `seeds/` whose rows are
the model's first previous version, when its table does not exist yet and every table the seed reads
does (e.g. the codes of the tables an older store kept them in). Otherwise the first version is empty.

Incremental builds (dbt's incremental models): `run(..., incremental=True)` sets the variable
`incremental` (false in a full build) and builds the models with an `-- incremental:` header from
their previous version instead of from scratch; every other model is rebuilt whole, as always.

    -- incremental: append
        new table = the previous rows + this SELECT's rows (the model returns only the new ones
        when `incremental` is true)
    -- incremental: rebuild user_code in features.changed_users [unless features.x changed]
        new table = the previous rows whose user_code is not in features.changed_users (this
        build's version) + this SELECT's rows (the model returns only those keys' rows when
        `incremental` is true); with `unless <table> changed`, a change of that table's rows
        since the previous build rebuilds the model whole instead

It is still one SELECT, the same file for both modes: the model filters its inputs with
`getvariable('incremental')`. Whether an incremental build is valid at all (same parameters and
SQL as the previous build, no global filter such as k-core) is the caller's decision
(`rechub_store/data/incremental.py`); the audits and the one-transaction swap are the same as in
a full build. What differs is how such a model's new version is stored: its recomputed rows go to
`<schema>.__tmp_<table>__delta`, and `<schema>.__tmp_<table>` is a view of the kept previous rows
plus those, which later models and the audits read. The swap transaction then deletes the
rebuilt keys' rows from the table and inserts the delta, in place: the kept rows (99 % of
them on a night with 1 % new events) are neither copied nor rewritten. Rows deleted in place are
not all vacuumed by DuckDB, so once a table holds more than `REWRITE_DEAD_SHARE` of them, that
build copies its kept rows into a new table and swaps it in whole instead, which drops them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.errors import UserError
from rechub_store.paths import SQL_DIR
from rechub_store.warehouse import transaction

TMP_PREFIX = "__tmp_"
# an incremental model's table is rewritten whole once its deleted rows not yet vacuumed exceed this
# share of its live rows (`needs_rewrite`)
REWRITE_DEAD_SHARE = 0.1
AUDIT_DIR = "audits"
SEED_DIR = "seeds"  # first versions of `-- self:` models (`-- seed:` headers), not models themselves
# Schemas a user model may not write: ingested data, bookkeeping, results, DuckDB's own.
RESERVED_SCHEMAS = {
    "raw": "ingested data",
    "meta": "build, model and job bookkeeping",
    "main": "published results",
    "metrics": "the beyond-accuracy metric tables (sql/metrics/, rebuilt by evaluate)",
    "temp": "DuckDB's temporary objects",
    "system": "DuckDB's catalog",
    "information_schema": "DuckDB's catalog",
    "pg_catalog": "DuckDB's catalog",
}
METRICS_DIR = "metrics"  # run after scoring (`run_metric_models`), not part of a feature build

# progress(step, done, total): called before each model runs (step = model name) and at the end.
Progress = Callable[[str, int, int], None]

_NAME = r'"?([A-Za-z_][A-Za-z0-9_]*)"?'
_REFERENCE = re.compile(rf"(?<![A-Za-z0-9_.]){_NAME}\s*\.\s*{_NAME}(?![A-Za-z0-9_])")
_SELF_HEADER = re.compile(r"^\s*--\s*self:\s*(\(.*\))\s*$", re.IGNORECASE)
_SEED_HEADER = re.compile(r"^\s*--\s*seed:\s*(\S+)\s*$", re.IGNORECASE)
_PARTITION_HEADER = re.compile(r"^\s*--\s*partition:", re.IGNORECASE)
_PARTITION_SPEC = re.compile(
    r"^\s*--\s*partition:\s*([A-Za-z_][A-Za-z0-9_]*)\s*,\s*one\s+per\s+([0-9][0-9_]*)\s+rows\s+of\s+"
    r"([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)\s*$",
    re.IGNORECASE,
)
_INCREMENTAL_HEADER = re.compile(r"^\s*--\s*incremental:", re.IGNORECASE)
_TABLE = r"([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)"
_INCREMENTAL_SPEC = re.compile(
    r"^\s*--\s*incremental:\s*(?:(append)|rebuild\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\s+"
    rf"{_TABLE}(?:\s+unless\s+{_TABLE}\s+changed)?)\s*$",
    re.IGNORECASE,
)
_READS_INCREMENTAL = re.compile(r"getvariable\s*\(\s*'incremental'\s*\)", re.IGNORECASE)
_READS_PARTITION = re.compile(r"getvariable\s*\(\s*'partition'\s*\)", re.IGNORECASE)
_READS_N_PARTITIONS = re.compile(r"getvariable\s*\(\s*'n_partitions'\s*\)", re.IGNORECASE)


@dataclass(frozen=True)
class Partitioning:
    """`-- partition: <column>, one per <rows> rows of <schema.table>`: build in n passes."""

    column: str  # what the model filters on (documentation; the model does the filtering)
    rows_per_partition: int
    sized_by: str  # schema.table whose row count decides n

    def count(self, rows: int) -> int:
        return max(1, -(-rows // self.rows_per_partition))


@dataclass(frozen=True)
class Incremental:
    """`-- incremental: append` or `-- incremental: rebuild <key> in <table> [unless <table> changed]`."""

    mode: str  # append | rebuild
    key: str | None = None  # rebuild: the column whose keys are recomputed
    keys_from: str | None = None  # rebuild: schema.table listing those keys (a model of the build)
    unless_changed: str | None = None  # rebuild whole when this table's rows changed


@dataclass(frozen=True)
class Model:
    """One SQL model: its table, source file, text and the models it reads."""

    name: str  # schema.table
    path: Path
    sql: str
    self_columns: str | None = None  # "(value VARCHAR, code INTEGER)" from a `-- self:` header
    refs: frozenset[str] = frozenset()
    partition: Partitioning | None = None  # from a `-- partition:` header
    user: bool = False  # from the user's models folder (a new table or an override of a built-in one)
    incremental: Incremental | None = None  # from an `-- incremental:` header
    seed: str | None = None  # SELECT of the first previous version (`-- seed:` header)

    @property
    def schema(self) -> str:
        return self.name.split(".")[0]

    @property
    def table(self) -> str:
        return self.name.split(".")[1]

    @property
    def tmp_name(self) -> str:
        return f"{self.schema}.{TMP_PREFIX}{self.table}"

    @property
    def delta_name(self) -> str:
        """An incremental build's recomputed rows of this model (applied to the table in the swap)."""
        return f"{self.schema}.{TMP_PREFIX}{self.table}__delta"


@dataclass
class ModelRun:
    model: str
    rows: int
    seconds: float
    partitions: int = 1
    source: str = "builtin"  # builtin | user (the --models-dir folder)
    mode: str = "full"  # full | incremental (previous rows kept, the changed ones recomputed)


@dataclass
class RunResult:
    build_id: str
    models: list[ModelRun] = field(default_factory=list)
    seconds: float = 0.0
    views: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    audits: dict[str, float] = field(default_factory=dict)  # audit name -> seconds


# ---------------------------------------------------------------- parsing


def _code_only(sql: str, string_fill: str = " ") -> str:
    """The text with comments blanked out and string literals filled with `string_fill` (same
    length, so offsets still match)."""
    out = list(sql)
    i, n = 0, len(sql)
    while i < n:
        two = sql[i : i + 2]
        if two == "--":
            end = sql.find("\n", i)
            end = n if end < 0 else end
        elif two == "/*":
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
        elif sql[i] == "'":
            end = i + 1
            while end < n:
                if sql[end] == "'" and sql[end + 1 : end + 2] == "'":
                    end += 2
                    continue
                if sql[end] == "'":
                    end += 1
                    break
                end += 1
        else:
            i += 1
            continue
        fill = string_fill if sql[i] == "'" else " "
        for k in range(i, end):
            if out[k] != "\n":
                out[k] = fill
        i = end
    return "".join(out)


def _references(sql: str, names: Iterable[str]) -> list[tuple[int, int, str]]:
    """(start, end, model) for every reference to one of `names` in the code (not comments/strings)."""
    wanted = {n.lower() for n in names}
    found = []
    for m in _REFERENCE.finditer(_code_only(sql)):
        name = f"{m.group(1)}.{m.group(2)}".lower()
        if name in wanted:
            found.append((m.start(), m.end(), name))
    return found


def _rewrite(sql: str, refs: list[tuple[int, int, str]], targets: Mapping[str, str]) -> str:
    """Replace the references whose model is in `targets` by the target table name."""
    parts, last = [], 0
    for start, end, name in refs:
        if name in targets:
            parts.append(sql[last:start])
            parts.append(targets[name])
            last = end
    parts.append(sql[last:])
    return "".join(parts)


def _self_header(sql: str) -> str | None:
    for line in sql.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("--"):
            return None
        m = _SELF_HEADER.match(line)
        if m:
            return m.group(1)
    return None


def _header_lines(sql: str) -> list[str]:
    """The leading comment lines (blank lines skipped), where headers live."""
    lines = []
    for line in sql.splitlines():
        if not line.strip():
            continue
        if not line.lstrip().startswith("--"):
            break
        lines.append(line)
    return lines


def _partition_header(path: Path, sql: str) -> Partitioning | None:
    for line in _header_lines(sql):
        if not _PARTITION_HEADER.match(line):
            continue
        m = _PARTITION_SPEC.match(line)
        if not m:
            raise UserError(
                f"{path}: bad partition header {line.strip()!r}; expected "
                "`-- partition: <column>, one per <rows> rows of <schema.table>`"
            )
        if not (_READS_PARTITION.search(sql) and _READS_N_PARTITIONS.search(sql)):
            raise UserError(
                f"{path}: a partitioned model must filter its inputs with getvariable('partition') "
                "and getvariable('n_partitions')"
            )
        rows = int(m.group(2).replace("_", ""))
        if rows < 1:
            raise UserError(f"{path}: partition header: rows per partition must be >= 1")
        return Partitioning(m.group(1), rows, m.group(3).lower())
    return None


def _incremental_header(path: Path, sql: str) -> Incremental | None:
    for line in _header_lines(sql):
        if not _INCREMENTAL_HEADER.match(line):
            continue
        m = _INCREMENTAL_SPEC.match(line)
        if not m:
            raise UserError(
                f"{path}: bad incremental header {line.strip()!r}; expected `-- incremental: append` or "
                "`-- incremental: rebuild <column> in <schema.table> [unless <schema.table> changed]`"
            )
        if not _READS_INCREMENTAL.search(sql):
            raise UserError(
                f"{path}: an incremental model must filter its inputs with getvariable('incremental')"
            )
        if m.group(1):
            return Incremental("append")
        return Incremental(
            "rebuild", m.group(2).lower(), m.group(3).lower(), (m.group(4) or "").lower() or None
        )
    return None


def _seed(path: Path, sql: str, root: Path, self_columns: str | None) -> str | None:
    """The SELECT a `-- seed: seeds/<file>.sql` header names (inside `root`'s seeds folder)."""
    for line in _header_lines(sql):
        m = _SEED_HEADER.match(line)
        if not m:
            continue
        if self_columns is None:
            raise UserError(f"{path}: a `-- seed:` header needs a `-- self: (col TYPE, ...)` header")
        seeds = (root / SEED_DIR).resolve()
        file = (root / m.group(1)).resolve()
        if file.parent != seeds or file.suffix != ".sql":
            raise UserError(f"{path}: the seed {m.group(1)!r} must be a .sql file in {SEED_DIR}/")
        if not file.is_file():
            raise UserError(f"{path}: seed {file} not found")
        return _check_single_select(file, file.read_text(encoding="utf-8"))
    return None


def seed_tables(model: Model) -> list[str]:
    """The tables the model's seed reads (all must exist for the seed to be used)."""
    if model.seed is None:
        return []
    code = _code_only(model.seed)
    return sorted({f"{m.group(1)}.{m.group(2)}".lower() for m in _REFERENCE.finditer(code)})


def _model_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    if len(parts) < 2:
        raise UserError(
            f"{path}: a model must live in a schema folder (<models folder>/<schema>/[<stage>/]<table>.sql)"
        )
    name = f"{parts[0]}.{path.stem}".lower()
    if not re.fullmatch(r"[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*", name) or path.stem.startswith(TMP_PREFIX):
        raise UserError(
            f"{path}: {name!r} is not a valid table name (letters, digits, _; no {TMP_PREFIX} prefix)"
        )
    return name


def _check_single_select(path: Path, sql: str) -> str:
    """The model's text without trailing comments and `;`; one statement only."""
    code = _code_only(sql, string_fill="'").rstrip()  # a final string literal is code, not padding
    body = sql[: len(code)].rstrip()
    if code.endswith(";"):
        body = body[:-1]
        code = code[:-1]
    if ";" in code:
        raise UserError(f"{path}: a model must be one SELECT statement (found ';' inside)")
    if not code.strip():
        raise UserError(f"{path}: empty model")
    return body


def user_models_folder(path: Path | str) -> Path:
    """The user's models folder, resolved; a one-line error when it is not a folder."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"models folder {folder} not found (--models-dir, RECHUB_MODELS_DIR or [build] models_dir)"
        )
    return folder.resolve()


def _model_files(root: Path, only: str | None = None) -> list[Path]:
    """The feature store's model files under `root` (audits and metrics left out), or with `only`
    the files of that one top folder (e.g. METRICS_DIR)."""

    def wanted(path: Path) -> bool:
        top = path.relative_to(root).parts[0]
        return top == only if only is not None else top not in (AUDIT_DIR, METRICS_DIR, SEED_DIR)

    return sorted(p for p in root.rglob("*.sql") if wanted(p))


def _sources(
    sql_dir: Path, user_dir: Path | None, only: str | None = None
) -> dict[str, tuple[Path, str, bool]]:
    """schema.table -> (file, text, from the user's folder) for every model, overrides applied."""
    if not sql_dir.is_dir():
        raise UserError(f"SQL folder {sql_dir} not found")
    sources: dict[str, tuple[Path, str, bool]] = {}
    for path in _model_files(sql_dir, only):
        name = _model_name(path, sql_dir)
        if name in sources:
            raise UserError(f"{path}: table {name} is already defined by {sources[name][0]}")
        sources[name] = (path, _check_single_select(path, path.read_text(encoding="utf-8")), False)
    if user_dir is None:
        return sources
    user_dir = user_models_folder(user_dir)
    for path in _model_files(user_dir):
        name = _model_name(path, user_dir)
        schema, table = name.split(".")
        if schema in RESERVED_SCHEMAS:
            raise UserError(
                f"{path}: a user model may not create {name} (schema {schema} holds "
                f"{RESERVED_SCHEMAS[schema]}); use staging, features or a schema of your own"
            )
        if name in sources:
            other, _, other_is_user = sources[name]
            if other_is_user:
                raise UserError(f"{path}: table {name} is already defined by {other}")
            builtin_rel = other.relative_to(sql_dir).as_posix()
            if path.relative_to(user_dir).as_posix().lower() != builtin_rel.lower():
                raise UserError(
                    f"{path}: {name} is a built-in model (sql/{builtin_rel}); to replace it, "
                    f"put your version at the same path: {user_dir / builtin_rel}"
                )
        elif schema == "features" and table.startswith("vocab_"):
            raise UserError(
                f"{path}: features.vocab_* names are kept for the vocabulary views of sparse attributes; "
                "choose another table name"
            )
        sources[name] = (path, _check_single_select(path, path.read_text(encoding="utf-8")), True)
    return sources


def discover(
    sql_dir: Path = SQL_DIR, user_dir: Path | None = None, only: str | None = None
) -> dict[str, Model]:
    """All models under `sql_dir` and the user's folder (audits and metrics excluded), dependencies
    resolved; with `only`, the models of that top folder alone (METRICS_DIR: the metric models).

    A user model at the same relative path as a built-in one replaces it; a user model with a
    built-in model's table name at another path, or in a reserved schema, is a UserError.
    """
    sources = _sources(sql_dir, user_dir, only)
    models = {}
    for name, (path, sql, user) in sources.items():
        root = user_models_folder(user_dir) if user and user_dir is not None else sql_dir
        header = _self_header(sql)
        refs = {r for _, _, r in _references(sql, sources)}
        if name in refs:
            if header is None:
                raise UserError(
                    f"{path}: model reads its own table {name}; add a `-- self: (col TYPE, ...)` header"
                )
            refs.discard(name)
        partition = _partition_header(path, sql)
        if partition and partition.sized_by in sources and partition.sized_by not in refs:
            raise UserError(
                f"{path}: the partition header sizes by {partition.sized_by}, which the model does not read"
            )
        incremental = _incremental_header(path, sql)
        for table in (incremental.keys_from, incremental.unless_changed) if incremental else ():
            if table and table not in refs:
                raise UserError(
                    f"{path}: the incremental header names {table}, which the model does not read"
                )
        seed = _seed(path, sql, root, header)
        models[name] = Model(name, path, sql, header, frozenset(refs), partition, user, incremental, seed)
    return models


def _audit_files(root: Path) -> dict[str, Path]:
    folder = root / AUDIT_DIR
    if not folder.is_dir():
        return {}
    nested = sorted(p for p in folder.rglob("*.sql") if p.parent != folder)
    if nested:
        raise UserError(f"{nested[0]}: audits are files directly in {folder}, not in sub-folders")
    return {p.stem: p for p in sorted(folder.glob("*.sql"))}


def discover_audits(sql_dir: Path = SQL_DIR, user_dir: Path | None = None) -> dict[str, tuple[Path, str]]:
    """name -> (file, text) of the audits: the built-in ones, then the user's (same name replaces)."""
    files = _audit_files(sql_dir)
    if user_dir is not None:
        files.update(_audit_files(user_models_folder(user_dir)))
    return {name: (p, _check_single_select(p, p.read_text(encoding="utf-8"))) for name, p in files.items()}


def fingerprint(sql_dir: Path = SQL_DIR, user_dir: Path | None = None) -> str:
    """Hash of every model's and audit's file name and text, built-in and the user's: a changed
    model means the feature store must be rebuilt (the metric models, which a build never runs,
    are left out)."""
    digest = hashlib.sha1()
    for path in sorted(p for p in sql_dir.rglob("*.sql") if p.relative_to(sql_dir).parts[0] != METRICS_DIR):
        digest.update(str(path.relative_to(sql_dir)).encode())
        digest.update(path.read_bytes())
    if user_dir is not None:
        root = user_models_folder(user_dir)
        for path in sorted(root.rglob("*.sql")):
            digest.update(f"\0user\0{path.relative_to(root).as_posix()}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- planning


def order(models: Mapping[str, Model]) -> list[Model]:
    """Topological order (ties broken by name, so the order is stable); a cycle is a UserError."""
    pending = {name: set(m.refs) for name, m in models.items()}
    done: list[Model] = []
    while pending:
        ready = sorted(n for n, deps in pending.items() if not deps)
        if not ready:
            cycle = ", ".join(sorted(pending))
            raise UserError(f"SQL models have a dependency cycle among: {cycle}")
        for name in ready:
            done.append(models[name])
            del pending[name]
        for deps in pending.values():
            deps.difference_update(ready)
    return done


def resolve(models: Mapping[str, Model], select: str) -> str:
    """Accept `features.events`, `events` or a path to the .sql file."""
    key = select.strip().lower()
    if key.endswith(".sql"):
        key = Path(key).stem
    if key in models:
        return key
    matches = [n for n in models if n.split(".")[1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"model {select!r} is ambiguous: {', '.join(sorted(matches))}")
    raise UserError(f"unknown model {select!r}; models: {', '.join(sorted(models))}")


def plan(models: Mapping[str, Model], select: str | None = None) -> list[Model]:
    """Models to build, in order: all, or `select` and everything downstream of it."""
    ordered = order(models)
    if select is None:
        return ordered
    chosen = {resolve(models, select)}
    for m in ordered:
        if m.refs & chosen:
            chosen.add(m.name)
    return [m for m in ordered if m.name in chosen]


# ---------------------------------------------------------------- running


def _display(path: Path, *roots: Path) -> str:
    """`sql/features/events.sql` rather than an absolute path, when the file is in a models folder."""
    for root in roots:
        if path.is_relative_to(root):
            return str(Path(root.name) / path.relative_to(root))
    return str(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__).replace(TMP_PREFIX, "")


def _drop_tmp_tables(con: duckdb.DuckDBPyConnection, schemas: Iterable[str]) -> None:
    """Drop leftovers of this build (or of an interrupted one) in the models' schemas: the views
    of incremental models' new versions first, then the tables."""
    for kind, catalog, column in (
        ("VIEW", "duckdb_views()", "view_name"),
        ("TABLE", "duckdb_tables()", "table_name"),
    ):
        rows = con.execute(
            f"SELECT schema_name, {column} FROM {catalog} WHERE database_name = current_database() "
            f"AND starts_with({column}, ?) AND list_contains(?, schema_name)",
            [TMP_PREFIX, sorted(set(schemas))],
        ).fetchall()
        for schema, name in rows:
            con.execute(f'DROP {kind} IF EXISTS "{schema}"."{name}"')


def set_variables(con: duckdb.DuckDBPyConnection, variables: Mapping[str, Any]) -> None:
    for name, value in variables.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise UserError(f"invalid parameter name {name!r}")
        con.execute(f"SET VARIABLE {name} = ?", [value])


def _partition_count(con: duckdb.DuckDBPyConnection, model: Model, targets: Mapping[str, str]) -> int:
    """Passes for a partitioned model: from the row count of the model its header names (the new
    version when it is built in this run, else the current table; 1 when there is none)."""
    spec = model.partition
    if spec is None:
        return 1
    table = targets.get(spec.sized_by, spec.sized_by)
    if not _table_exists(con, table, views=True):  # a new incremental version is a view
        return 1
    schema, name = table.split(".")
    (rows,) = con.execute(f'SELECT count(*) FROM "{schema}"."{name}"').fetchone()  # type: ignore[misc]
    return spec.count(int(rows))


def run(
    con: duckdb.DuckDBPyConnection,
    *,
    variables: Mapping[str, Any],
    select: str | None = None,
    sql_dir: Path = SQL_DIR,
    progress: Progress | None = None,
    after_swap: Callable[[duckdb.DuckDBPyConnection], dict[str, Any]] | None = None,
    params_record: Mapping[str, Any] | None = None,
    partitions: Mapping[str, int] | None = None,
    user_dir: Path | None = None,
    incremental: bool = False,
) -> RunResult:
    """Build the models (all, or `select` + downstream), audit them and swap them in; record meta.builds.

    `user_dir` is the user's models folder: its models and audits join the build (see `discover`).
    `incremental`: build the models with an `-- incremental:` header from their previous version
    (see the module docstring); the caller has checked that the previous build allows it.

    `after_swap(con)` runs inside the swap transaction (new tables visible, not yet committed)
    and returns the build's summary stored as meta.builds.report; it may create views.
    `partitions` forces the number of passes of partitioned models (model name -> n), instead
    of the count their `-- partition:` header derives from the input size.
    """
    if user_dir is not None:
        user_dir = user_models_folder(user_dir)
    models = discover(sql_dir, user_dir)
    forced: dict[str, int] = {}
    for key, n in (partitions or {}).items():
        name = resolve(models, key)
        if models[name].partition is None:
            raise UserError(f"model {name} has no `-- partition:` header")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"partitions of {name}: expected an integer >= 1, got {n!r}")
        forced[name] = n
    todo = plan(models, select)
    audits = discover_audits(sql_dir, user_dir)
    roots = (sql_dir, *([user_dir] if user_dir else []))
    build_id = f"b{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    result = RunResult(build_id)
    started = time.perf_counter()

    # A single process writes the file (DuckDB's lock), so anything still "running" was interrupted.
    con.execute(
        "UPDATE meta.builds SET status = 'failed', error = coalesce(error, 'interrupted') "
        "WHERE status = 'running'"
    )
    schemas = {m.schema for m in models.values()}
    for schema in sorted(schemas):  # a user model may bring a schema of its own
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    _drop_tmp_tables(con, schemas)
    record = dict(params_record if params_record is not None else variables)
    if select is not None:
        record["select"] = select
    if user_dir is not None:
        record["models_dir"] = str(user_dir)
    con.execute(
        "INSERT INTO meta.builds (build_id, started_at, status, params) VALUES (?, now(), 'running', ?)",
        [build_id, json.dumps(record, default=str)],
    )
    set_variables(con, variables)
    set_variables(con, {"partition": 0, "n_partitions": 1, "incremental": incremental})
    # DuckDB's own terminal progress bar would fight with the caller's display (rich, logs).
    con.execute("SET enable_progress_bar = false")
    targets = {m.name: m.tmp_name for m in todo}
    delta: dict[str, Model] = {}  # incremental models built as their recomputed rows (`Model.delta_name`)

    # Readers order explicitly, so the build need not keep insertion order: without it DuckDB
    # streams and spills big CREATE TABLE AS more cheaply. Restored after, for the caller.
    (keep_order,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()  # type: ignore[misc]
    con.execute("SET preserve_insertion_order = false")
    try:
        current = "setup"
        try:
            for i, model in enumerate(todo):
                current = f"model {_display(model.path, *roots)}"
                if progress:
                    progress(model.name, i, len(todo))
                t0 = time.perf_counter()
                if model.self_columns and not _table_exists(con, model.name):
                    _first_version(con, model)
                refs = [r for r in _references(model.sql, models) if r[2] != model.name]
                sql = _rewrite(model.sql, refs, targets)
                n = forced.get(model.name) or _partition_count(con, model, targets)
                keep = _kept_rows(con, model, targets) if incremental else None
                into = model.tmp_name
                if keep is not None and needs_rewrite(con, model.name):
                    con.execute(f"CREATE TABLE {into} AS\n{keep}\n")  # kept rows copied, swapped in whole
                elif keep is not None:
                    # the recomputed rows, typed like the table they are added to in the swap
                    into = model.delta_name
                    con.execute(f"CREATE TABLE {into} AS SELECT * FROM {model.name} LIMIT 0")
                    delta[model.name] = model
                elif incremental and model.incremental is not None:
                    set_variables(con, {"incremental": False})  # this model is rebuilt whole
                for part in range(n):
                    if n > 1:
                        current = f"model {_display(model.path, *roots)} (partition {part + 1} of {n})"
                        if progress:
                            progress(f"{model.name} (part {part + 1}/{n})", i, len(todo))
                    set_variables(con, {"partition": part, "n_partitions": n})
                    if part == 0 and keep is None:
                        con.execute(f"CREATE TABLE {into} AS\n{sql}\n")
                    else:
                        con.execute(f"INSERT INTO {into}\n{sql}\n")
                if model.name in delta:
                    # the new version that later models and the audits read: the kept rows and the
                    # recomputed ones, without copying the kept rows
                    con.execute(f"CREATE VIEW {model.tmp_name} AS\n{keep}\nUNION ALL\nSELECT * FROM {into}\n")
                set_variables(con, {"partition": 0, "n_partitions": 1, "incremental": incremental})
                (rows,) = con.execute(f"SELECT count(*) FROM {model.tmp_name}").fetchone()  # type: ignore[misc]
                result.models.append(
                    ModelRun(
                        model.name,
                        int(rows),
                        round(time.perf_counter() - t0, 4),
                        n,
                        "user" if model.user else "builtin",
                        "incremental" if keep is not None else "full",
                    )
                )
            if progress:
                progress("audits", len(todo), len(todo))
            for audit, (path, sql) in audits.items():
                current = f"audit {_display(path, *roots)}"
                sql = _rewrite(sql, _references(sql, models), targets)
                t0 = time.perf_counter()
                row = con.execute(f"SELECT count(*), any_value(v::VARCHAR) FROM ({sql}) v").fetchone()
                result.audits[audit] = round(time.perf_counter() - t0, 4)
                if row and row[0]:
                    raise UserError(
                        f"audit {audit} failed ({_display(path, *roots)}): {row[0]} rows violate it, "
                        f"e.g. {row[1]}"
                    )
            current = "swapping the new tables in"
            with transaction(con):
                # incremental models change in place (their keys' rows out, the recomputed rows in),
                # before the full models' new tables, which name the keys, are renamed
                for model in delta.values():
                    _apply_delta(con, model, targets)
                for model in todo:
                    if model.name not in delta:
                        con.execute(f"DROP TABLE IF EXISTS {model.name}")
                        con.execute(f"ALTER TABLE {model.tmp_name} RENAME TO {model.table}")
                result.seconds = round(time.perf_counter() - started, 4)
                result.summary = after_swap(con) if after_swap else {}
                con.execute(
                    "UPDATE meta.builds SET status = 'success', finished_at = now(), models = ?, report = ? "
                    "WHERE build_id = ?",
                    [
                        _models_json(result),
                        json.dumps({**result.summary, "audit_seconds": result.audits}, default=str),
                        build_id,
                    ],
                )
        except (duckdb.Error, UserError, KeyboardInterrupt) as exc:
            message = str(exc) if isinstance(exc, UserError) else f"{current} failed: {_first_line(exc)}"
            if isinstance(exc, KeyboardInterrupt):
                message = "interrupted"
            _fail(con, build_id, message, result, schemas)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UserError(message) from exc
        except BaseException as exc:
            _fail(con, build_id, f"{type(exc).__name__}: {exc}", result, schemas)
            raise
    finally:
        con.execute(f"SET preserve_insertion_order = {bool(keep_order)}")
    return result


def _models_json(result: RunResult) -> str:
    """meta.builds.models: per model its rows, seconds, passes, source (builtin | user) and mode
    (full | incremental)."""
    return json.dumps(
        {
            m.model: {
                "rows": m.rows,
                "seconds": m.seconds,
                "partitions": m.partitions,
                "source": m.source,
                "mode": m.mode,
            }
            for m in result.models
        }
    )


def _table_exists(con: duckdb.DuckDBPyConnection, table: str, *, views: bool = False) -> bool:
    """Whether `schema.name` is a table (or, with `views`, a view) of the current database."""
    schema, name = table.split(".")
    union = " UNION ALL SELECT database_name, schema_name, view_name FROM duckdb_views()" if views else ""
    (n,) = con.execute(  # type: ignore[misc]
        "SELECT count(*) FROM (SELECT database_name, schema_name, table_name AS name FROM duckdb_tables()"
        f"{union}) WHERE database_name = current_database() AND schema_name = ? AND name = ?",
        [schema, name],
    ).fetchone()
    return bool(n)


def _first_version(con: duckdb.DuckDBPyConnection, model: Model) -> None:
    """Create a `-- self:` model's table before its first build: its seed's rows when every table
    the seed reads exists, else empty. One transaction: a failed seed leaves no empty table behind
    (which the next build would take as the previous version)."""
    seeded = model.seed is not None and all(_table_exists(con, t) for t in seed_tables(model))
    with transaction(con):
        con.execute(f"CREATE TABLE {model.name} {model.self_columns}")
        if seeded:
            con.execute(f"INSERT INTO {model.name} BY NAME ({model.seed})")


def _same_rows(con: duckdb.DuckDBPyConnection, a: str, b: str) -> bool:
    """Whether two tables hold the same multiset of rows."""
    (differ,) = con.execute(  # type: ignore[misc]
        f"SELECT EXISTS (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b}) "
        f"OR EXISTS (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a})"
    ).fetchone()
    return not differ


def _kept_rows(con: duckdb.DuckDBPyConnection, model: Model, targets: Mapping[str, str]) -> str | None:
    """The SELECT of the previous rows an incremental build keeps for this model, or None when the
    model is rebuilt whole (no `-- incremental:` header, no previous table, or the table named by
    `unless ... changed` changed in this build)."""
    spec = model.incremental
    if spec is None or not _table_exists(con, model.name):
        return None
    if spec.mode == "append":
        return f"SELECT * FROM {model.name}"
    assert spec.key is not None and spec.keys_from is not None
    if spec.unless_changed is not None:
        new = targets.get(spec.unless_changed, spec.unless_changed)
        if not _table_exists(con, spec.unless_changed) or not _same_rows(con, spec.unless_changed, new):
            return None
    keys = targets.get(spec.keys_from, spec.keys_from)
    return f"SELECT p.* FROM {model.name} p ANTI JOIN {keys} k ON p.{spec.key} = k.{spec.key}"


def needs_rewrite(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Whether an incremental model's table (`schema.table`) is rewritten whole this build instead of
    changed in place: when it stores more than REWRITE_DEAD_SHARE deleted rows per live row. DuckDB vacuums
    only part of the rows deleted in place (`bench/inplace.py`: a table of 4M live rows stored
    4.71M after 60 nights of 1 % churn), and a rewrite drops them all."""
    schema, name = table.split(".")
    row = con.execute(
        "SELECT estimated_size FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = ? AND table_name = ?",
        [schema, name],
    ).fetchone()
    (live,) = con.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[misc]
    return bool(row) and row[0] > live * (1 + REWRITE_DEAD_SHARE)


def _apply_delta(con: duckdb.DuckDBPyConnection, model: Model, targets: Mapping[str, str]) -> None:
    """Inside the swap transaction: make an incremental model's table its new version, in place.
    The rows of the rebuilt keys go (`rebuild` mode; append mode keeps every row) and the
    recomputed rows are added: the same rows as the view the build read (`_kept_rows` + delta)."""
    spec = model.incremental
    assert spec is not None
    con.execute(f"DROP VIEW {model.tmp_name}")
    if spec.mode != "append":
        assert spec.key is not None and spec.keys_from is not None
        keys = targets.get(spec.keys_from, spec.keys_from)
        con.execute(f"DELETE FROM {model.name} WHERE {spec.key} IN (SELECT {spec.key} FROM {keys})")
    con.execute(f"INSERT INTO {model.name} SELECT * FROM {model.delta_name}")
    con.execute(f"DROP TABLE {model.delta_name}")


def _fail(
    con: duckdb.DuckDBPyConnection, build_id: str, message: str, result: RunResult, schemas: Iterable[str]
) -> None:
    """Drop the half-built temporary tables and record the failure; the previous tables stay."""
    try:
        _drop_tmp_tables(con, schemas)
        con.execute(
            "UPDATE meta.builds SET status = 'failed', finished_at = now(), error = ?, models = ? "
            "WHERE build_id = ?",
            [
                message,
                _models_json(result),
                build_id,
            ],
        )
    except duckdb.Error:
        pass  # the original error is the one worth showing


def run_metric_models(
    con: duckdb.DuckDBPyConnection, *, variables: Mapping[str, Any], sql_dir: Path = SQL_DIR
) -> dict[str, list[dict[str, Any]]]:
    """Build the `sql/metrics/` models (tables `metrics.<name>`, replaced each time) in dependency
    order with `variables` set, after scoring; returns the rows of every model with `metric` and
    `value` columns (the metric outputs), by model name. Helper models are built but not returned.
    """
    models = discover(sql_dir, only=METRICS_DIR)
    set_variables(con, variables)
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {METRICS_DIR}")
    out: dict[str, list[dict[str, Any]]] = {}
    for model in order(models):
        try:
            con.execute(f"CREATE OR REPLACE TABLE {model.name} AS\n{model.sql}\n")
            cur = con.execute(f"SELECT * FROM {model.name}")
        except duckdb.Error as exc:
            raise UserError(
                f"metric model {_display(model.path, sql_dir)} failed: {_first_line(exc)}"
            ) from exc
        names = [d[0] for d in cur.description]
        if {"metric", "value"} <= set(names):
            out[model.name] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return out

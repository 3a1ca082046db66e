"""`rechub-store sql`: analyst SQL that can read the published results and nothing else.

Two independent layers; each stops the known attacks on its own.

1. The engine. The database is opened read-only with extension autoloading and autoinstalling
   off, then DuckDB's `enable_external_access` is turned off with only the Parquet files behind
   `recommendations_history` allowed (`allowed_paths`) plus a private spill folder deleted after
   the query, and `lock_configuration` is set: no statement can read another file (`read_text`,
   `read_csv`, `glob`, `ATTACH`, URLs), load or install an extension, or change a setting back.
2. The statement. DuckDB's own parser reads every statement before any runs: only a query
   (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE) or an EXPLAIN of one passes, and its
   syntax tree (`json_serialize_sql`) may contain nothing but query nodes, so a COPY, INSERT,
   UPDATE or DELETE hidden in a CTE is refused, as is the `query()` table function (SQL inside
   a string, out of the parser's sight).

Every refusal or error is one line (`UserError`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import duckdb

from rechub_store.errors import UserError
from rechub_store.publish.analytics import HISTORY_VIEW, history_paths, history_view_sql
from rechub_store.settings import cpu_threads
from rechub_store.warehouse import Warehouse

# Query nodes of DuckDB's syntax tree that only read. Anything else (COPY_QUERY_NODE,
# INSERT_QUERY_NODE, ... and node kinds added by later DuckDB versions) is refused.
READ_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
# Table functions that run SQL given as text: the parser cannot see inside the string.
DENIED_TABLE_FUNCTIONS = frozenset({"query"})
ANALYST_CONFIG = {
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
}


def _refuse(what: str) -> UserError:
    return UserError(
        "sql: only read-only queries are allowed (SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, "
        f"SUMMARIZE, EXPLAIN); got {what}"
    )


def _first(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _explained(text: str) -> str:
    """The statement an EXPLAIN explains: the text after `EXPLAIN [ANALYZE] [( options )]`,
    found with DuckDB's tokenizer (comments and case are its business, not ours)."""
    tokens = [(offset, kind) for offset, kind in duckdb.tokenize(text) if kind != duckdb.token_type.comment]
    ends = [offset for offset, _ in tokens[1:]] + [len(text)]
    words = [text[offset:end].strip() for (offset, _), end in zip(tokens, ends, strict=True)]
    i = 1  # tokens[0] is EXPLAIN
    if i < len(words) and words[i].upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    if i < len(words) and words[i].startswith("("):
        depth = 0
        while i < len(words):
            depth += words[i].count("(") - words[i].count(")")
            i += 1
            if depth <= 0:
                break
    if i >= len(tokens):
        raise _refuse("an EXPLAIN without a statement")
    return text[tokens[i][0] :]


def _walk(node: Any) -> None:
    if isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str):
            if kind.endswith("_NODE") and kind not in READ_NODES:
                raise _refuse(f"{kind.removesuffix('_NODE').removesuffix('_QUERY')} inside the query")
            if kind == "TABLE_FUNCTION":
                name = str((node.get("function") or {}).get("function_name", "")).lower()
                if name in DENIED_TABLE_FUNCTIONS:
                    raise _refuse(f"the {name}() table function (it runs SQL given as text)")
        for value in node.values():
            _walk(value)
    elif isinstance(node, list):
        for value in node:
            _walk(value)


def _check(con: duckdb.DuckDBPyConnection, text: str, kind: duckdb.StatementType) -> None:
    if kind == duckdb.StatementType.EXPLAIN:
        inner = _explained(text)
        try:
            statements = con.extract_statements(inner)
        except duckdb.Error as exc:
            raise UserError(f"sql: {_first(exc)}") from None
        if len(statements) != 1:
            raise _refuse("an EXPLAIN of more than one statement")
        _check(con, statements[0].query, statements[0].type)
        return
    if kind != duckdb.StatementType.SELECT:
        raise _refuse(str(kind).rsplit(".", 1)[-1])
    (serialized,) = con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()  # type: ignore[misc]
    tree = json.loads(serialized)
    if tree.get("error"):
        raise UserError(f"sql: cannot check the query: {tree.get('error_message')}")
    _walk(tree)


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[str]:
    """Every statement of `sql` (checked read-only, as DuckDB parsed it), or a one-line UserError."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise UserError(f"sql: {_first(exc)}") from None
    if not statements:
        raise UserError("sql: empty query")
    for st in statements:
        _check(con, st.query, st.type)
    return [st.query for st in statements]


def analyst_connection(
    path: Path,
    *,
    history: list[Path] | None = None,
    spill: Path | None = None,
    threads: int | None = None,
    memory_limit: str | None = None,
) -> duckdb.DuckDBPyConnection:
    """A read-only connection to `path` that can read no other file than `history` (the Parquet
    files behind recommendations_history, shown through a temporary view resolved against the
    analytics file's own folder) and spill only into `spill`; its configuration is locked."""
    try:
        con = duckdb.connect(str(path), read_only=True, config=dict(ANALYST_CONFIG))
    except duckdb.Error as exc:
        raise UserError(f"cannot open {path} read-only: {_first(exc)}") from None
    try:
        con.execute(f"SET threads = {int(threads or cpu_threads())}")
        con.execute("SET enable_progress_bar = false")
        if memory_limit:
            con.execute("SET memory_limit = ?", [memory_limit])
        files = [str(p) for p in history or []]
        if history is not None:
            (stored,) = con.execute(
                "SELECT any_value(sql) FROM duckdb_views() WHERE view_name = ? AND NOT temporary",
                [HISTORY_VIEW],
            ).fetchone()  # type: ignore[misc]
            if any(f not in (stored or "") for f in files) and all(Path(f).exists() for f in files):
                # the warehouse was moved or restored since the publish: read the files where they are
                con.execute(f"CREATE TEMP VIEW {HISTORY_VIEW} AS {history_view_sql(files)}")
        con.execute("SET temp_directory = ?", [str(spill) if spill else ""])
        con.execute("SET allowed_paths = ?", [files])
        con.execute("SET allowed_directories = ?", [[]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def query_readonly(
    warehouse: Warehouse, sql: str, limit: int | None = None
) -> tuple[list[str], list[tuple], str]:
    """Run analyst SQL read-only against analytics.duckdb (else the warehouse, read-only).

    Returns (column names, rows, the database file used). Statements are checked before any runs.
    """
    analytics = warehouse.analytics_path
    path = analytics if analytics.exists() else warehouse.path
    if not path.exists():
        raise UserError(f"nothing to query: no {analytics} or {warehouse.path} (run `rechub-store demo`)")
    history = history_paths(analytics) if path == analytics else None
    spill = Path(tempfile.mkdtemp(prefix="rechub-sql-"))
    try:
        con = analyst_connection(
            path,
            history=history,
            spill=spill,
            threads=warehouse.threads,
            memory_limit=warehouse.memory_limit,
        )
        try:
            statements = check_read_only(con, sql)
            try:
                for text in statements[:-1]:
                    con.execute(text)
                cur = con.execute(statements[-1])
                names = [d[0] for d in cur.description] if cur.description else []
                rows = cur.fetchmany(limit) if limit else cur.fetchall()
            except duckdb.Error as exc:
                raise UserError(f"sql: {_first(exc)}") from None
        finally:
            con.close()
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return names, rows, str(path)

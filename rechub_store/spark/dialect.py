"""The `sql/` models, written in DuckDB's dialect, as Spark SQL statements.

SQLGlot does most of the translation. The rules below cover what it leaves out or would translate
with a different meaning, each checked against both engines by the Spark tests (every feature
table from Spark equals DuckDB's). A construct that no rule handles and that SQLGlot would pass on
with another meaning is refused (`UnportableSQL`), never guessed.

A model becomes a list of steps: each CTE is its own step, registered as a temporary view under
the CTE's name (`AS MATERIALIZED` ones written out once, as DuckDB computes them once; Spark would
recompute a CTE per reference), a `WITH RECURSIVE` CTE is iterated by the engine (Spark refuses
window functions over a recursive reference, which the k-core uses), and the final query is the
model. DuckDB's integer `hash()` is computed exactly (`rechub_duckdb_hash`, registered by the
engine), so seeded negatives are the same rows on both engines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.duckdb import DuckDB

# DuckDB hashes integers with a 64-bit murmur finaliser: x ^= x >> 32; x *= C; twice; x ^= x >> 32.
# Spark's BIGINT product wraps mod 2^64 without ANSI arithmetic (`session.CONF`), which is exactly
# the unsigned product's bits.
_MURMUR_C = 0xD6E8FEB86659FD93 - 2**64  # as a signed BIGINT

SPARK_FUNCTIONS = [
    "rechub_fold(x BIGINT) RETURNS BIGINT RETURN x ^ shiftrightunsigned(x, 32)",
    "rechub_duckdb_hash(x BIGINT) RETURNS BIGINT RETURN "
    f"rechub_fold(rechub_fold(rechub_fold(x) * ({_MURMUR_C})) * ({_MURMUR_C}))",
    # h mod n with h read as unsigned 64-bit (n > 0): (h >>> 1) mod n, doubled, plus the low bit
    "rechub_umod(h BIGINT, n BIGINT) RETURNS BIGINT RETURN "
    "((shiftrightunsigned(h, 1) % n) * 2 + (h & 1)) % n",
]


class UnportableSQL(ValueError):
    """A construct with no faithful Spark translation."""


class _DuckDBAsWritten(DuckDB):
    """DuckDB's dialect with list indexes kept exactly as written (1-based): SQLGlot's DuckDB parser
    shifts `l[i]` to 0-based only when it can type `i`, which would make the tree ambiguous."""

    INDEX_OFFSET = 0


@dataclass(frozen=True)
class Step:
    """One statement of a translated model. `view` is None for the model's own query; `recursive`
    steps carry the anchor and the step query (`sql` is the anchor) and their output columns."""

    view: str | None
    sql: str
    materialize: bool = False
    recursive_step: str | None = None
    columns: tuple[str, ...] = ()


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int | float):
        return exp.Literal.number(value)
    if isinstance(value, list | tuple):
        return exp.Array(expressions=[_literal(v) for v in value])
    return exp.Literal.string(str(value))


def _call(node: exp.Expression, *names: str) -> bool:
    return isinstance(node, exp.Anonymous) and node.name.lower() in names


def _is_hash(node: exp.Expression) -> bool:
    while isinstance(node, exp.Paren):
        node = node.this
    return _call(node, "rechub_duckdb_hash")


def _bottom_up(node: exp.Expression, rule) -> exp.Expression:
    """Apply `rule` to every node, children first (SQLGlot's own transform stops at a replaced node)."""
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expression):
            node.set(key, _bottom_up(value, rule))
        elif isinstance(value, list):
            node.set(key, [_bottom_up(v, rule) if isinstance(v, exp.Expression) else v for v in value])
    return rule(node)


def _first_occurrences(node: exp.ArrayFilter) -> exp.Expression | None:
    """`list_filter(l, lambda x, i: list_position(l, x) = i)`: l without repeats, first positions
    kept; Spark's array_distinct keeps first occurrences in order."""
    lam = node.expression
    if not isinstance(lam, exp.Lambda) or len(lam.expressions) != 2:
        return None
    x, i = (e.name for e in lam.expressions)
    body = lam.this
    if not isinstance(body, exp.EQ) or body.expression.name != i:
        return None
    pos = body.this
    if not isinstance(pos, exp.ArrayPosition | exp.Anonymous):
        return None
    args = [pos.this, pos.expression] if isinstance(pos, exp.ArrayPosition) else pos.expressions
    if len(args) != 2 or args[1].name != x:
        return None
    if args[0].sql() != node.this.sql():
        return None
    return exp.ArrayDistinct(this=node.this.copy())


def _rules(variables: Mapping[str, Any]):
    def rule(node: exp.Expression) -> exp.Expression:
        # build parameters: getvariable('x') -> its value
        if _call(node, "getvariable"):
            name = node.expressions[0].name
            if name not in variables:
                raise UnportableSQL(f"getvariable('{name}'): no such build parameter")
            return _literal(variables[name])
        # a timestamp as microseconds since the epoch (the audits hash event times)
        if _call(node, "epoch_us"):
            return exp.Anonymous(this="unix_micros", expressions=[node.expressions[0].copy()])
        # arg_min_null/arg_max_null keep the winning row's value even when NULL, as min_by/max_by do
        if _call(node, "arg_min_null", "arg_max_null"):
            name = "MIN_BY" if node.name.lower() == "arg_min_null" else "MAX_BY"
            return exp.Anonymous(this=name, expressions=node.expressions)
        # DuckDB's integer hash(), computed exactly; unsigned 64-bit in DuckDB, the same bits in Spark
        if _call(node, "hash"):
            if len(node.expressions) != 1:
                raise UnportableSQL("hash() of several values: hash one integer at a time")
            return exp.Anonymous(
                this="rechub_duckdb_hash",
                expressions=[exp.Cast(this=node.expressions[0].copy(), to=exp.DataType.build("BIGINT"))],
            )
        if isinstance(node, exp.Cast) and node.to.this == exp.DataType.Type.UBIGINT:
            # only bits are kept in a UBIGINT (hash inputs): a BIGINT has the same ones
            node.set("to", exp.DataType.build("BIGINT"))
            return node
        # a hash is unsigned: its shifts are logical and its remainders unsigned
        if isinstance(node, exp.BitwiseRightShift) and _is_hash(node.this):
            return exp.Anonymous(
                this="shiftrightunsigned", expressions=[node.this.copy(), node.expression.copy()]
            )
        if isinstance(node, exp.Mod) and _is_hash(node.this):
            return exp.Anonymous(this="rechub_umod", expressions=[node.this.copy(), node.expression.copy()])
        # list(x ORDER BY k, ...) -> the values of collect_list(struct(k..., x)) sorted by the keys
        if isinstance(node, exp.ArrayAgg) and isinstance(node.this, exp.Order):
            order = node.this
            keys = []
            for i, key in enumerate(order.expressions):
                if key.args.get("desc") or key.args.get("nulls_first"):
                    raise UnportableSQL(f"ordered list aggregate with DESC/NULLS FIRST: {node.sql('duckdb')}")
                keys.append(exp.alias_(key.this.copy(), f"k{i}"))
            value = order.this
            distinct = isinstance(value, exp.Distinct)
            if distinct:
                # list(DISTINCT x ORDER BY x): a set of (x, x) pairs is the set of x
                (value,) = value.expressions
                if [k.this.sql() for k in order.expressions] != [value.sql()]:
                    raise UnportableSQL(f"list(DISTINCT x ORDER BY another key): {node.sql('duckdb')}")
            pairs = exp.Struct(expressions=[*keys, exp.alias_(value.copy(), "v")])
            # a struct is never NULL, so NULL values are kept, as DuckDB's list() keeps them
            packed = exp.ArraySort(
                this=exp.Anonymous(this="collect_set", expressions=[pairs])
                if distinct
                else exp.ArrayAgg(this=pairs)
            )
            unpack = exp.Lambda(
                this=exp.Dot(this=exp.to_identifier("s"), expression=exp.to_identifier("v")),
                expressions=[exp.to_identifier("s")],
            )
            return exp.Transform(this=packed, expression=unpack)
        # DuckDB's any_value skips NULLs: Spark's any_value(x, true)
        if isinstance(node, exp.IgnoreNulls) and isinstance(node.this, exp.AnyValue):
            return exp.Anonymous(this="any_value", expressions=[node.this.this.copy(), exp.true()])
        # isfinite(x): NaN and +-inf are >= inf in both engines; NULL stays NULL
        if _call(node, "isfinite"):
            return exp.LT(
                this=exp.Abs(this=node.expressions[0].copy()),
                expression=exp.Cast(this=exp.Literal.string("inf"), to=exp.DataType.build("DOUBLE")),
            )
        # len(list) -> size(list) (our models call len() on lists only; strings use length())
        if isinstance(node, exp.Length) or _call(node, "len"):
            arg = node.this if isinstance(node, exp.Length) else node.expressions[0]
            return exp.ArraySize(this=arg.copy())
        if isinstance(node, exp.ArrayFilter):
            distinct = _first_occurrences(node)
            if distinct is not None:
                return distinct
        # l[a:b] (1-based, inclusive) -> slice(l, a, b - a + 1)
        if isinstance(node, exp.Bracket) and any(isinstance(e, exp.Slice) for e in node.expressions):
            (cut,) = node.expressions
            start = cut.this.copy() if cut.this is not None else exp.Literal.number(1)
            if cut.expression is None:
                raise UnportableSQL(f"open-ended list slice {node.sql('duckdb')}")
            length = exp.Sub(
                this=exp.Paren(this=cut.expression.copy()), expression=exp.Paren(this=start.copy())
            )
            length = exp.Add(this=length, expression=exp.Literal.number(1))
            return exp.Anonymous(
                this="slice",
                expressions=[node.this.copy(), exp.Cast(this=start, to=exp.DataType.build("INT")), length],
            )
        # l[i]: 1-based in DuckDB, NULL out of range and at 0; Spark's element_at wants an INT
        if isinstance(node, exp.Bracket) and len(node.expressions) == 1:
            index = node.expressions[0]
            return exp.If(
                this=exp.EQ(this=index.copy(), expression=exp.Literal.number(0)),
                true=exp.Null(),
                false=exp.Anonymous(
                    this="try_element_at",
                    expressions=[node.this.copy(), exp.Cast(this=index.copy(), to=exp.DataType.build("INT"))],
                ),
            )
        # xor(a, b) is `a ^ b` in Spark, which binds looser than `*`: keep it in parentheses
        if isinstance(node, exp.BitwiseXor | exp.BitwiseOr | exp.BitwiseAnd) and not isinstance(
            node.parent, exp.Paren
        ):
            return exp.Paren(this=node)
        return node

    return rule


def _parse(sql: str) -> exp.Expression:
    try:
        return sqlglot.parse_one(sql, read=_DuckDBAsWritten)
    except sqlglot.errors.ParseError as exc:
        raise UnportableSQL(f"SQLGlot cannot parse it: {str(exc).splitlines()[0]}") from exc


def to_spark(sql: str, variables: Mapping[str, Any]) -> str:
    """One DuckDB query (no step splitting) as Spark SQL."""
    return _translate(_parse(sql), variables)


def _translate(tree: exp.Expression, variables: Mapping[str, Any]) -> str:
    tree = tree.copy()
    for cte in tree.find_all(exp.CTE):
        cte.set("materialized", None)
    tree = _bottom_up(tree, _rules(variables))
    for node in tree.walk():
        if _call(node, "list_position", "list_distinct", "list_extract", "list_element", "array_extract"):
            raise UnportableSQL(f"{node.name}(): no exact Spark equivalent")
        if (
            isinstance(node, exp.ArrayFilter | exp.Transform)
            and len(getattr(node.expression, "expressions", ())) > 1
        ):
            raise UnportableSQL("a lambda with an index argument (1-based in DuckDB, 0-based in Spark)")
    return tree.sql("spark", pretty=True)


def _references(node: exp.Expression, name: str) -> bool:
    return any(t.name == name and not t.db for t in node.find_all(exp.Table))


def steps(sql: str, variables: Mapping[str, Any]) -> list[Step]:
    """The model as Spark statements, in order: its CTEs as views, then its query."""
    tree = _parse(sql)
    with_ = tree.args.get("with_") or tree.args.get("with")
    if with_ is None:
        return [Step(None, _translate(tree, variables))]
    out: list[Step] = []
    for cte in with_.expressions:
        body = cte.this
        name = cte.alias
        if with_.args.get("recursive") and isinstance(body, exp.Union) and _references(body.expression, name):
            if body.args.get("distinct"):
                raise UnportableSQL(f"recursive CTE {name} with UNION (not UNION ALL)")
            columns = tuple(c.name for c in cte.args["alias"].columns)
            if not columns:
                raise UnportableSQL(f"recursive CTE {name} needs its column list: {name} (a, b, ...)")
            out.append(
                Step(
                    name,
                    _translate(body.this, variables),
                    recursive_step=_translate(body.expression, variables),
                    columns=columns,
                )
            )
        else:
            out.append(
                Step(name, _translate(body, variables), materialize=bool(cte.args.get("materialized")))
            )
    final = tree.copy()
    final.set("with_", None)
    final.set("with", None)
    out.append(Step(None, _translate(final, variables)))
    return out

"""Named choices and the one configuration path shared by the CLI, the job file, build and training
parameters, in a core module without heavy imports.

Every setting is a pydantic dataclass made by `@settings_class`: unknown keys are refused
(`extra="forbid"`), scalar fields use the strict types below (no `"3"` -> 3, no `true` as 1), bounds and
choices are declared on the field. `typed(cls, values, names)` validates a mapping; one formatter turns
a `ValidationError` into a one-line `UserError` naming the key where the value came from: `names` maps a
location inside the class to that key (`train.params.epochs` in a job file via `keys("train.params")`,
`--epochs` on the command line via `flags`). Calling a class directly (`TrainConfig(epochs=0)`,
`dataclasses.replace`) validates the same way and names CLI flags, the other place such values come from.

What the choices mean lives with their code: seen filters and slices in `ranking.protocol`,
baselines in `ranking.baselines`, negative sampling in `sql/features/splits/negatives_train.sql`
(build) and `training.trainer` (objectives).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AllowInfNan, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic.fields import FieldInfo

from rechub_store.errors import UserError

SEEN_FILTERS = ("except-target", "all", "none")
DEFAULT_SEEN_FILTER = "except-target"
BASELINE_NAMES = ("popularity", "itemknn", "transition")
SLICES = ("all", "cold", "active", "head", "tail", "repeat", "new")
INDEXES = ("annoy", "exact")  # how top-k lists are found: approximate (annoy) or brute force
# Negative sampling of the feature build (`features.negatives_train`), and the training objectives:
# the same modes plus `full` softmax over the catalogue; training may also reuse the built ones.
NEG_MODES = ("pointwise", "pairwise", "listwise")
NEG_SAMPLERS = ("uniform", "popularity")
TRAIN_NEG_MODES = (*NEG_MODES, "full")
TRAIN_NEG_SAMPLERS = (*NEG_SAMPLERS, "static")

# Strict scalar types for settings fields (a float field takes an integer, nothing else converts).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

Loc = tuple[str | int, ...]
Names = Callable[[Loc], str]  # a location inside a settings class -> the key the user wrote
T = TypeVar("T")


def flags(loc: Loc) -> str:
    """Command-line naming: `neg_mode` -> `--neg-mode` (deeper parts dotted: `--model-params.decay`)."""
    return keys("--" + str(loc[0]).replace("_", "-"))(loc[1:]) if loc else ""


def keys(prefix: str) -> Names:
    """File naming under `prefix`: `score.annoy.target_recall`, `ingest.sources[0].kind`."""

    def name(loc: Loc) -> str:
        out = prefix
        for part in loc:
            out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
        return out

    return name


class Invalid(ValueError):
    """A rule across fields, raised by a settings validator: `key` is the field at fault (None: the
    table as a whole); `{field}` in `text` becomes the name the user wrote for that field
    (`--neg-mode`, `train.params.neg_mode`)."""

    def __init__(self, key: str | None, text: str) -> None:
        super().__init__(text)
        self.key = key
        self.text = text


class Nested(ValueError):
    """A mapping field checked against another settings class (per model or per source kind): its
    errors are reported at `key` inside the field's owner."""

    def __init__(self, key: str, cls: type, error: ValidationError) -> None:
        super().__init__(str(error))
        self.key = key
        self.cls = cls
        self.error = error


def check_nested(cls: type[T], values: Mapping[str, Any], key: str) -> T:
    """`values` as `cls`, for use inside a validator (errors surface at `key`)."""
    try:
        return _adapter(cls).validate_python(dict(values))
    except ValidationError as exc:
        raise Nested(key, cls, exc) from None


def settings_class(cls: type[T]) -> type[T]:
    """A frozen pydantic dataclass refusing unknown keys; direct construction raises `UserError`
    naming CLI flags."""
    out = pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))(cls)
    init = out.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as exc:
            raise UserError(describe(exc, out, lambda loc: flags(loc) or out.__name__)) from None

    out.__init__ = __init__  # type: ignore[method-assign]
    return out


@functools.cache
def _adapter(cls: type) -> TypeAdapter:
    return TypeAdapter(cls)


def typed(cls: type[T], values: Any, names: Names) -> T:
    """`values` (a mapping) validated as `cls`; a `UserError` naming the key via `names` otherwise."""
    try:
        return _adapter(cls).validate_python(values)
    except ValidationError as exc:
        raise UserError(describe(exc, cls, names)) from None


# ------------------------------------------------------------------ the one error formatter


def describe(exc: ValidationError, cls: type, names: Names) -> str:
    """One line for the first problem (unknown keys first, as a reader fixes them first)."""
    errors = _flatten(exc, cls, ())
    unknown = [e for e in errors if e.error["type"] in ("extra_forbidden", "unexpected_keyword_argument")]
    if unknown:
        first = unknown[0]
        extra = sorted(str(e.loc[-1]) for e in unknown if e.loc[:-1] == first.loc[:-1])
        allowed = sorted(_fields_at(first.owner, first.field[:-1]))
        where = names(first.loc[:-1])
        problem = f"unknown key(s) {', '.join(extra)} (allowed: {', '.join(allowed)})"
        return f"{where}: {problem}" if where else problem
    e = errors[0]
    problem = e.error.get("ctx", {}).get("error")
    if isinstance(problem, Invalid):
        text = re.sub(r"\{(\w+)\}", lambda m: names((*e.loc, m.group(1))), problem.text)
        return f"{names((*e.loc, problem.key) if problem.key else e.loc)}: {text}"
    if isinstance(problem, ValueError):  # a field validator's own words ("expected an ISO date ...")
        return f"{names(_shown(e.loc))}: {problem}"
    if e.error["type"] in ("missing", "missing_argument"):
        return f"{names(e.loc)}: missing (expected {_expected(e.owner, e.field)})"
    expected = _expected(e.owner, e.field)
    if e.error["type"] == "finite_number":
        expected = expected.replace("number", "finite number", 1)
    return f"{names(_shown(e.loc))}: expected {expected}, got {e.error['input']!r}"


@dataclasses.dataclass(frozen=True)
class _Error:
    owner: type  # the settings class whose field `field` is (bounds, choices and known keys live there)
    field: Loc  # location inside `owner`
    loc: Loc  # location from the top (what `names` is given)
    error: dict[str, Any]


def _flatten(exc: ValidationError, cls: type, at: Loc) -> list[_Error]:
    """Every error with its owner class and location, `Nested` errors unfolded."""
    out = []
    for error in exc.errors():
        loc = (*at, *error["loc"])
        problem = error.get("ctx", {}).get("error")
        if isinstance(problem, Nested):
            out += _flatten(problem.error, problem.cls, (*loc, problem.key))
        else:
            out.append(_Error(cls, tuple(error["loc"]), loc, error))
    return out


def _shown(loc: Loc) -> Loc:
    """A scalar list item is named by its list (`evaluate.ks`); items that are tables keep the index."""
    return loc[:-1] if loc and isinstance(loc[-1], int) else loc


def _strip(annotation: Any) -> tuple[Any, list[Any]]:
    """(bare type, metadata) of `Annotated[X | None, ...]`."""
    meta: list[Any] = []
    while True:
        if typing.get_origin(annotation) is Annotated:
            annotation, *more = typing.get_args(annotation)
            for m in more:  # `Field(ge=1)` inside Annotated carries its bounds as metadata
                meta += m.metadata if isinstance(m, FieldInfo) else [m]
        elif isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            options = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(options) != 1:
                return annotation, meta
            annotation = options[0]
        else:
            return annotation, meta


def _field_at(cls: type, loc: Loc) -> tuple[Any, list[Any], str | None]:
    """(type, metadata, description) of the field at `loc` inside `cls` (Any when not declared)."""
    annotation: Any = cls
    meta: list[Any] = []
    description = None
    for part in loc:
        annotation = _strip(annotation)[0]
        if isinstance(part, int) and typing.get_origin(annotation) in (tuple, list):
            annotation, meta, description = typing.get_args(annotation)[0], [], None
        elif isinstance(part, str) and dataclasses.is_dataclass(annotation):
            info = annotation.__pydantic_fields__.get(part)
            if info is None:
                return Any, [], None
            annotation, meta, description = info.annotation, list(info.metadata), info.description
        else:
            return Any, [], None
    annotation, more = _strip(annotation)
    return annotation, meta + more, description


def _fields_at(cls: type, loc: Loc) -> list[str]:
    annotation = _field_at(cls, loc)[0] if loc else cls
    return [f.name for f in dataclasses.fields(annotation)] if dataclasses.is_dataclass(annotation) else []


def _expected(cls: type, loc: Loc) -> str:
    annotation, meta, description = _field_at(cls, loc)
    if description:
        return description
    origin = typing.get_origin(annotation) or annotation
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if origin in (tuple, list):
        item = typing.get_args(annotation)[0]
        bare = _strip(item)[0]
        if typing.get_origin(bare) is Literal:
            return "a list of " + ", ".join(map(str, typing.get_args(bare)))
        short = any(getattr(m, "min_length", 0) for m in meta)
        return (
            f"a {'non-empty ' if short else ''}list of {_noun(bare, plural=True)}{_bounds(_strip(item)[1])}"
        )
    if origin is int or origin is float:
        return _number(origin, meta)
    if origin is str and any(getattr(m, "min_length", 0) for m in meta):
        return "a non-empty string"
    return _noun(annotation)


def _noun(annotation: Any, plural: bool = False) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a table"}
    origin = typing.get_origin(annotation) or annotation
    if dataclasses.is_dataclass(origin):
        return "tables" if plural else "a table"
    word = names.get(origin, "a value")
    if plural:
        return {int: "integers", float: "numbers", str: "strings"}.get(origin, "values")
    return word


def _number(kind: type, meta: list[Any]) -> str:
    noun = "an integer" if kind is int else "a number"
    bounds = _bounds(meta)
    if bounds == " > 0":
        return "a positive integer" if kind is int else "a positive number"
    return noun + bounds


def _bounds(meta: list[Any]) -> str:
    """` >= 1`, ` in [0, 1]`, ` in (0, 1]` from a field's annotated bounds."""
    lo = hi = None
    for m in meta:  # pydantic's constraint objects (annotated-types `Ge`, `Gt`, ...), by attribute
        if getattr(m, "ge", None) is not None:
            lo = ("[", ">=", m.ge)
        elif getattr(m, "gt", None) is not None:
            lo = ("(", ">", m.gt)
        elif getattr(m, "le", None) is not None:
            hi = ("]", "<=", m.le)
        elif getattr(m, "lt", None) is not None:
            hi = (")", "<", m.lt)
    if lo and hi:
        return f" in {lo[0]}{_num(lo[2])}, {_num(hi[2])}{hi[0]}"
    bound = lo or hi
    return f" {bound[1]} {_num(bound[2])}" if bound else ""


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_seen_filter(value: str, key: str = "--seen-filter") -> str:
    return as_choice(value, key, SEEN_FILTERS)


def check_index(value: str, key: str = "--index") -> str:
    return as_choice(value, key, INDEXES)


def as_choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    """A command-line choice (`--index`, `--seen-filter`) outside any settings class."""
    if value not in choices:
        raise UserError(f"{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


@settings_class
class AnnoySettings:
    """Auto-tuning: raise search_k (then n_trees) until recall@k vs exact reaches target_recall."""

    n_trees: Annotated[Int, Field(ge=1)] = 10  # starting point
    max_trees: Annotated[Int, Field(ge=1)] = 160
    search_k: Annotated[Int | None, Field(ge=1)] = None  # fixed search_k: skips tuning when set
    target_recall: Annotated[Float, Field(gt=0.0, le=1.0)] = 0.95
    sample_users: Annotated[Int, Field(ge=1)] = 1000
    seed: Annotated[Int, Field(ge=0)] = 0

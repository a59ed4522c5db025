"""What a DSL query means: the records it selects. Two queries are equivalent when their filters select the same
records of a table built for the pair, and their ``sort`` and ``limit`` are the same.

The table is generated from the domain's spec (field types, enum values, value pools) and the constants of both
filters: for each compared field, every constant, its neighbours (±1 and ±0.5 for numbers, the day before and after
for dates), the midpoints between consecutive constants, strings that contain each combination of the ``contains``
constants, near misses of each string constant (another case, a letter more, a letter less), the empty string, and a
few seeded draws from the field's pool. Within those values every comparison of either filter takes each truth value
it can take, so the cartesian product of the per-field values decides equivalence exactly; when that product is
larger than ``max_records`` a seeded sample of it is used (``Equivalence.exhaustive`` says which).

Records have every field (the spec declares no optional field), so ``not (x > 5)`` and ``x <= 5`` are equivalent;
numbers are real numbers, so ``x > 5`` and ``x >= 6`` are not. Comparing values of different types (a number field
against ``"12"``) is false, and ``neq`` is ``not eq``. ``between`` includes both ends; ``contains`` is a
case-sensitive substring test. Any catalog operator is evaluated on any field (schema validity is scored apart).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.dsl.domains import OPERATOR_CATALOG, DomainSpec, FieldSpec

MAX_RECORDS = 65_536
SEPARATOR = "\u2063"  # invisible separator: joins contains-constants without making new substrings of them
POOL_DRAWS = 2


class Malformed(ValueError):
    """A query that cannot be evaluated (unknown field or operator, a value of the wrong shape)."""


@dataclass(frozen=True)
class Equivalence:
    equivalent: bool
    reason: str
    records: int = 0
    exhaustive: bool = False

    def __bool__(self) -> bool:
        return self.equivalent


# ---------------------------------------------------------------------------------------------------- reading


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def comparisons(node: Any, spec: DomainSpec) -> list[tuple[str, str, Any]]:
    """``(field, op, value)`` of every comparison of a filter; raises :class:`Malformed` on what cannot be read."""
    if not isinstance(node, Mapping):
        raise Malformed(f"a filter node must be an object, not {type(node).__name__}")
    op = node.get("op")
    if op in ("and", "or"):
        args = node.get("args")
        if not isinstance(args, list) or not args:
            raise Malformed(f"'{op}' needs a non-empty list of args")
        return [c for a in args for c in comparisons(a, spec)]
    if op == "not":
        if "arg" not in node:
            raise Malformed("'not' needs an arg")
        return comparisons(node["arg"], spec)
    if op not in OPERATOR_CATALOG:
        raise Malformed(f"unknown operator {op!r}")
    name, value = node.get("field"), node.get("value")
    if not isinstance(name, str) or name not in spec.field_names:
        raise Malformed(f"unknown field {name!r}")
    if "value" not in node:
        raise Malformed(f"comparison on {name!r} has no value")
    if op == "in" and (not isinstance(value, list) or not value):
        raise Malformed("'in' needs a non-empty list")
    if op == "between" and (not isinstance(value, list) or len(value) != 2):
        raise Malformed("'between' needs a list of two values")
    return [(name, op, value)]


def _constants(found: Sequence[tuple[str, str, Any]]) -> dict[str, dict[str, list[Any]]]:
    """Per field: ``contains`` constants and every other constant (list values unrolled)."""
    out: dict[str, dict[str, list[Any]]] = {}
    for name, op, value in found:
        slot = out.setdefault(name, {"contains": [], "other": []})
        values = value if isinstance(value, list) else [value]
        slot["contains" if op == "contains" else "other"].extend(values)
    return out


# ---------------------------------------------------------------------------------------------------- the table


def _unique(values: Sequence[Any]) -> list[Any]:
    seen, out = set(), []
    for v in values:
        key = (type(v).__name__ if not _is_number(v) else "number", v)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


def _number_values(f: FieldSpec, consts: Sequence[Any], rng: random.Random) -> list[Any]:
    nums = sorted({float(c) for c in consts if _is_number(c)})
    points = [p for c in nums for p in (c - 1, c - 0.5, c, c + 0.5, c + 1)]
    points += [(a + b) / 2 for a, b in zip(nums, nums[1:])]
    if len(f.pool) == 2 and all(_is_number(x) for x in f.pool):
        lo, hi = sorted(f.pool)
        points += [rng.randint(int(lo), int(hi)) for _ in range(POOL_DRAWS)]
    points = points or [0]
    return _unique(int(p) if float(p).is_integer() else p for p in points)


def _date_values(f: FieldSpec, consts: Sequence[Any], rng: random.Random) -> list[Any]:
    points: list[str] = []
    for c in consts:
        if not isinstance(c, str):
            continue
        points.append(c)
        try:
            day = dt.date.fromisoformat(c)
        except ValueError:
            continue
        for delta in (-1, 1):
            try:
                points.append((day + dt.timedelta(days=delta)).isoformat())
            except OverflowError:
                pass
    years = [int(x) for x in f.pool if _is_number(x)] if len(f.pool) == 2 else []
    lo, hi = (min(years), max(years)) if years else (2000, 2030)
    for _ in range(POOL_DRAWS):
        points.append(f"{rng.randint(lo, max(lo, hi - 1)):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}")
    return _unique(points)


def _string_values(f: FieldSpec, eqs: Sequence[Any], contains: Sequence[Any], rng: random.Random) -> list[Any]:
    strings = [c for c in eqs if isinstance(c, str)]
    parts = _unique([c for c in contains if isinstance(c, str)])
    points: list[str] = ["", *strings]
    for s in strings + parts:
        points += [s.swapcase(), s + "x", s[:-1]]
    # every combination of contains-constants a string can hold (all subsets up to 4 constants, else up to pairs)
    sizes = range(1, len(parts) + 1) if len(parts) <= 4 else (1, 2, len(parts))
    for k in sizes:
        for combo in itertools.combinations(parts, k):
            points.append(SEPARATOR + SEPARATOR.join(combo) + SEPARATOR)
    pool = [p for p in f.pool if isinstance(p, str)]
    points += [rng.choice(pool) for _ in range(POOL_DRAWS)] if pool else ["other"]
    return _unique(points)


def field_values(f: FieldSpec, found: Mapping[str, list[Any]], rng: random.Random) -> list[Any]:
    """The values field ``f`` takes in the table, for the constants ``found`` (``{"contains": [...], "other":
    [...]}``) that the two filters compare it with."""
    consts = found.get("other", []) + found.get("contains", [])
    if f.type == "number":
        return _number_values(f, consts, rng)
    if f.type == "date":
        return _date_values(f, consts, rng)
    if f.type == "enum":
        return _unique([*f.enum_values, *(c for c in consts if isinstance(c, str))])
    return _string_values(f, found.get("other", []), found.get("contains", []), rng)


@dataclass(frozen=True)
class RecordTable:
    """Records as codes: ``codes[i, j]`` indexes ``values[fields[j]]`` (the value of field j in record i)."""

    fields: tuple[str, ...]
    values: dict[str, list[Any]]
    codes: np.ndarray
    exhaustive: bool

    def __len__(self) -> int:
        return int(self.codes.shape[0])

    def records(self) -> list[dict[str, Any]]:
        return [{f: self.values[f][c] for f, c in zip(self.fields, row)} for row in self.codes.tolist()]


def record_table(spec: DomainSpec, filters: Sequence[Any], *, seed: int = 0,
                 max_records: int = MAX_RECORDS) -> RecordTable:
    """The records on which ``filters`` are compared (see the module docstring); only compared fields vary."""
    found = [c for node in filters for c in comparisons(node, spec)]
    consts = _constants(found)
    rng = random.Random(f"records:{spec.name}:{seed}")
    names = tuple(n for n in spec.field_names if n in consts)
    values = {n: field_values(spec.field(n), consts[n], rng) for n in names}
    sizes = [len(values[n]) for n in names]
    total = math.prod(sizes)
    if total <= max_records:
        grids = np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij") if sizes else []
        codes = np.stack([g.ravel() for g in grids], axis=1) if sizes else np.zeros((1, 0), dtype=np.int64)
        return RecordTable(names, values, codes, True)
    gen = np.random.default_rng(seed)
    codes = np.stack([gen.integers(0, s, size=max_records) for s in sizes], axis=1)
    return RecordTable(names, values, codes, False)


# ---------------------------------------------------------------------------------------------------- evaluation


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    return isinstance(a, str) and isinstance(b, str) and a == b


def _order(a: Any, b: Any) -> int | None:
    if (_is_number(a) and _is_number(b)) or (isinstance(a, str) and isinstance(b, str)):
        return (a > b) - (a < b)
    return None


def holds(op: str, record_value: Any, value: Any) -> bool:
    """Does ``record_value <op> value`` hold?"""
    if op == "eq":
        return _same(record_value, value)
    if op == "neq":
        return not _same(record_value, value)
    if op == "in":
        return any(_same(record_value, v) for v in value)
    if op == "contains":
        return isinstance(record_value, str) and isinstance(value, str) and value in record_value
    if op == "between":
        low, high = _order(record_value, value[0]), _order(record_value, value[1])
        return low is not None and high is not None and low >= 0 and high <= 0
    o = _order(record_value, value)
    if o is None:
        return False
    return {"lt": o < 0, "lte": o <= 0, "gt": o > 0, "gte": o >= 0}[op]


def select(node: Any, table: RecordTable) -> np.ndarray:
    """The boolean mask of the records of ``table`` that filter ``node`` selects."""
    op = node["op"]
    if op in ("and", "or"):
        masks = [select(a, table) for a in node["args"]]
        return np.logical_and.reduce(masks) if op == "and" else np.logical_or.reduce(masks)
    if op == "not":
        return ~select(node["arg"], table)
    j = table.fields.index(node["field"])
    truth = np.array([holds(op, v, node["value"]) for v in table.values[node["field"]]], dtype=bool)
    return truth[table.codes[:, j]]


def _order_part(ast: Mapping[str, Any]) -> tuple[Any, Any]:
    sort = ast.get("sort") or []
    if not isinstance(sort, list) or not all(isinstance(k, Mapping) for k in sort):
        raise Malformed("sort must be a list of objects")
    limit = ast.get("limit")
    if limit is not None and not _is_number(limit):
        raise Malformed("limit must be a number")
    return [(k.get("field"), k.get("order")) for k in sort], (None if limit is None else float(limit))


def equivalent(candidate: Any, reference: Mapping[str, Any], spec: DomainSpec, *, seed: int = 0,
               max_records: int = MAX_RECORDS) -> Equivalence:
    """Do ``candidate`` and ``reference`` select the same records (same filter selection, same sort and limit)?
    A candidate that cannot be evaluated is not equivalent (the reason says why)."""
    if not isinstance(candidate, Mapping) or "filter" not in candidate:
        return Equivalence(False, "no filter")
    try:
        if _order_part(candidate) != _order_part(reference):
            return Equivalence(False, "sort or limit differs")
        table = record_table(spec, [candidate["filter"], reference["filter"]], seed=seed, max_records=max_records)
        mine, theirs = select(candidate["filter"], table), select(reference["filter"], table)
    except Malformed as exc:
        return Equivalence(False, f"malformed: {exc}")
    except (KeyError, TypeError) as exc:  # a reference that is itself malformed
        return Equivalence(False, f"malformed: {exc!r}")
    differ = int((mine != theirs).sum())
    if differ:
        return Equivalence(False, f"selects different records ({differ} of {len(table)} differ)", len(table),
                           table.exhaustive)
    return Equivalence(True, "selects the same records", len(table), table.exhaustive)

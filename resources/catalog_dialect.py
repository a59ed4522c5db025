"""The catalog's SQL, as the project and the README write it (DuckDB's), for a PostgreSQL catalog.

Only what astforge's own queries use is translated, and only where PostgreSQL has an exact equivalent:

- ``?`` placeholders become psycopg's ``%s`` (and a literal ``%`` becomes ``%%``);
- ``arg_max(x, by)`` / ``arg_min(x, by)`` (also ``max_by`` / ``min_by``) become an ordered ``array_agg``'s first
  element, ignoring rows whose ``by`` is NULL, as DuckDB does;
- ``GROUP BY ALL`` becomes ``GROUP BY`` the positions of the select list's non-aggregate items.

Anything else DuckDB-only (``QUALIFY``, ``EXCLUDE``, list functions) reaches PostgreSQL as written and fails there
with PostgreSQL's own message: rewrite such a query in SQL both understand, or export the catalog to DuckDB
(``python -m resources.catalog_export``).
"""

from __future__ import annotations

import re

_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)
_ARG_EXTREME = re.compile(r"\b(arg_max|arg_min|max_by|min_by)\s*\(", re.IGNORECASE)
_GROUP_BY_ALL = re.compile(r"\bGROUP\s+BY\s+ALL\b", re.IGNORECASE)
_SELECT = re.compile(r"\bSELECT\b", re.IGNORECASE)
_FROM = re.compile(r"\bFROM\b", re.IGNORECASE)
_DISTINCT = re.compile(r"^\s*DISTINCT\b", re.IGNORECASE)
_AGGREGATE_CALL = re.compile(
    r"\b(count|sum|avg|min|max|array_agg|string_agg|bool_and|bool_or|every|any_value|median|mode|stddev\w*|"
    r"variance|var_pop|var_samp|json_agg|jsonb_agg|json_object_agg|jsonb_object_agg|percentile_\w+)\s*\(",
    re.IGNORECASE)
_MARK = "\x00{}\x00"
_MARKED = re.compile("\x00(\\d+)\x00")


def to_postgres(sql: str) -> str:
    """``sql`` in DuckDB's words, as psycopg sends it to PostgreSQL (always with a parameter list)."""
    quoted: list[str] = []

    def hide(match: re.Match) -> str:
        quoted.append(match.group(0))
        return _MARK.format(len(quoted) - 1)

    code = _QUOTED.sub(hide, sql)
    code = _rewrite_arg_extremes(code)
    code = _rewrite_group_by_all(code)
    code = code.replace("%", "%%").replace("?", "%s")
    return _MARKED.sub(lambda m: quoted[int(m.group(1))].replace("%", "%%"), code)


def _closing_paren(code: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(code)):
        if code[i] == "(":
            depth += 1
        elif code[i] == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses in the query: {code[open_at:open_at + 80]!r}")


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _rewrite_arg_extremes(code: str) -> str:
    # Rightmost first: a call nested in another's arguments is rewritten before the outer one is cut apart.
    while matches := list(_ARG_EXTREME.finditer(code)):
        match = matches[-1]
        open_at = match.end() - 1
        close_at = _closing_paren(code, open_at)
        args = _split_top_level(code[open_at + 1:close_at])
        if len(args) != 2:
            call = code[match.start():close_at + 1]
            raise ValueError(f"{match.group(1)} takes two arguments (value, ordering): {call!r}")
        value, by = (a.strip() for a in args)
        order = "DESC" if match.group(1).lower() in ("arg_max", "max_by") else "ASC"
        code = (f"{code[:match.start()]}(array_agg({value} ORDER BY {by} {order}) FILTER (WHERE ({by}) IS NOT NULL))[1]"
                f"{code[close_at + 1:]}")
    return code


def _depths(code: str) -> list[int]:
    depths, depth = [], 0
    for ch in code:
        if ch == ")":
            depth -= 1
        depths.append(depth)
        if ch == "(":
            depth += 1
    return depths


def _rewrite_group_by_all(code: str) -> str:
    while match := _GROUP_BY_ALL.search(code):
        depths = _depths(code)
        level = depths[match.start()]
        select = None
        for candidate in _SELECT.finditer(code, 0, match.start()):
            between = depths[candidate.start():match.start()]
            if depths[candidate.start()] == level and min(between) >= level:
                select = candidate  # the last one at this level that the GROUP BY's query still encloses
        if select is None:
            raise ValueError("GROUP BY ALL without a SELECT at its level")
        end = next((f.start() for f in _FROM.finditer(code, select.end(), match.start())
                    if depths[f.start()] == level), match.start())
        items = _split_top_level(_DISTINCT.sub("", code[select.end():end]))
        keys = [str(i) for i, item in enumerate(items, 1) if not _AGGREGATE_CALL.search(item)]
        grouping = f"GROUP BY {', '.join(keys)}" if keys else ""
        code = code[:match.start()] + grouping + code[match.end():]
    return code

"""Markdown snippets for asset metadata and reports."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

# What Markdown reads as syntax inside a table cell: `__init__` would render bold, `a|b` split the cell, `<T>` vanish
# as an HTML tag, `[x](y)` become a link. A backslash escapes any ASCII punctuation (CommonMark); only these are
# escaped, so that the raw report.md stays legible: intervals "0.5 [0.4, 0.6]" (a link needs "](", whose parenthesis
# is escaped) and snake_case names (an underscore between two letters or digits never starts or ends emphasis).
# A cell never starts a line, so the line-start syntax (#, -, +, 1.) needs nothing.
_MARKDOWN_SPECIAL = re.compile(r"[\\`*<>|~&]|(?<!\w)_+|_+(?!\w)|\]\(")


def escape_markdown(text: str) -> str:
    """``text`` as literal Markdown: its special characters backslash-escaped, newlines shown as ⏎."""
    return _MARKDOWN_SPECIAL.sub(_escape, text.replace("\n", "⏎"))


def _escape(match: re.Match) -> str:
    found = match.group()
    return "]\\(" if found == "](" else "".join("\\" + c for c in found)


def _cell(value: object, width: int) -> str:
    # cut before escaping, so that an escape is never split from the character it escapes
    text = str(value)
    return escape_markdown(text if len(text) <= width else text[: width - 1] + "…")


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], width: int = 80) -> str:
    if not rows:
        return "_no rows_"
    head = "| " + " | ".join(escape_markdown(c) for c in columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_cell(r.get(c, ""), width) for c in columns) + " |" for r in rows)
    return head + body


def counts_table(counts: Mapping[str, int], key: str = "reason") -> str:
    if not counts:
        return "_none_"
    return markdown_table([{key: k, "count": v} for k, v in sorted(counts.items())], [key, "count"])

"""Markdown snippets for asset metadata and reports."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def _cell(value: object, width: int) -> str:
    text = str(value).replace("\n", "⏎").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str], width: int = 80) -> str:
    if not rows:
        return "_no rows_"
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "\n".join("| " + " | ".join(_cell(r.get(c, ""), width) for c in columns) + " |" for r in rows)
    return head + body


def counts_table(counts: Mapping[str, int], key: str = "reason") -> str:
    if not counts:
        return "_none_"
    return markdown_table([{key: k, "count": v} for k, v in sorted(counts.items())], [key, "count"])

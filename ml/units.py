"""Records that flow through the corpus: where a slice's files come from, a source file and the function-level
units cut from it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass

_BLANK_RUN = re.compile(r"[ \t]+")


def normalized_hash(code: str) -> str:
    """Content id for exact dedup: whitespace runs collapsed, trailing space and blank lines dropped."""
    lines = [_BLANK_RUN.sub(" ", line).rstrip() for line in code.strip().splitlines()]
    text = "\n".join(line for line in lines if line)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "dir" | "zip" | "hf" | "missing"
    location: str
    options: tuple[tuple[str, str], ...] = ()
    note: str = ""  # why a default is missing, shown to the user

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.location}" if self.kind != "missing" else "missing"

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.options).get(key, default)


@dataclass
class CodeUnit:
    """One function or method, with enough context to find it again."""

    id: str
    language: str
    source: str  # the corpus source it came from (e.g. "stdlib", "dir:/path", "hf:code_search_net")
    path: str  # path of the file inside that source
    name: str  # qualified name, e.g. "Class.method"
    code: str  # the unit's source text, dedented so it parses alone
    docstring: str  # docstring or leading comment, "" when there is none
    start_line: int  # 1-based, inclusive
    end_line: int

    def to_row(self) -> dict:
        return asdict(self)

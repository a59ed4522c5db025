"""Cutting source files into function-level code units."""

from __future__ import annotations

from dataclasses import dataclass, field

from ml.units import CodeUnit


@dataclass
class Extraction:
    """Units found in one file, and units skipped with the reason (``syntax_error`` ...)."""

    units: list[CodeUnit] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count

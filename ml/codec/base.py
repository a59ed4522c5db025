"""What every language codec offers; ``ml.languages`` maps a slice name to one of these."""

from __future__ import annotations

from typing import Protocol

MODES = ("verbose", "compact")


class DecodeError(ValueError):
    """A token sequence that is not a serialization this codec can decode."""


class Codec(Protocol):
    language: str

    def encode(self, code: str, mode: str = "compact") -> list[str]:
        """Serialize the AST of one unit (a function, wrapped as the language needs)."""

    def decode(self, tokens: list[str], mode: str = "compact") -> str:
        """Source text whose AST is the one the tokens describe."""

    def verify(self, code: str, tokens: list[str], mode: str = "compact") -> bool:
        """True when decoding ``tokens`` gives back the AST of ``code`` exactly."""

    def vocabulary(self) -> list[str]:
        """Every structural token this codec can emit, in a stable order."""

"""Decide whether one raw file is usable source text, and say why not when it is not."""

from __future__ import annotations

from dataclasses import dataclass

# Reasons are stable snake_case: they land in metadata and in the catalog's skipped_inputs table.
BINARY = "binary"
NON_UTF8 = "non_utf8"
MINIFIED = "minified"
OVERSIZED = "oversized_file"
EMPTY = "empty"


@dataclass(frozen=True)
class FileFilter:
    max_file_bytes: int = 1_000_000
    # A line this long is machine-made (minified or bundled), not code a person wrote.
    max_line_chars: int = 1000

    def classify(self, data: bytes) -> tuple[str | None, str | None]:
        """Return ``(text, None)`` for usable source, ``(None, reason)`` otherwise."""
        if not data.strip():
            return None, EMPTY
        if len(data) > self.max_file_bytes:
            return None, OVERSIZED
        if b"\x00" in data[:8192]:
            return None, BINARY
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark is not part of the code
        except UnicodeDecodeError:
            return None, NON_UTF8
        if any(len(line) > self.max_line_chars for line in text.splitlines()):
            return None, MINIFIED
        return text, None

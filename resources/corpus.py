"""Which source each language slice reads, and how much of it."""

from __future__ import annotations

import os

import dagster as dg

from ml.corpus.filters import FileFilter
from ml.corpus.sources import SourceSpec, parse_spec
from ml.languages import get_language
from resources.settings import active_profile


class CorpusResource(dg.ConfigurableResource):
    """``sources`` maps a slice to a spec (``dir:PATH``, ``zip:PATH``, ``hf:NAME?...``, or ``default``).

    A slice not named there reads ``$ASTFORGE_SOURCE_<SLICE>`` if set, else its embedded default.
    """

    sources: dict[str, str] = {}
    max_files: int | None = None  # None: the profile's cap (demo: 300 files per slice; full: no cap)
    max_file_bytes: int = 1_000_000
    max_line_chars: int = 1000

    def spec_for(self, language: str) -> SourceSpec:
        lang = get_language(language)
        spec = self.sources.get(language) or os.environ.get(f"ASTFORGE_SOURCE_{language.upper()}") or "default"
        return lang.default_source() if spec == "default" else parse_spec(spec)

    def file_limit(self) -> int | None:
        return self.max_files if self.max_files is not None else active_profile().max_files_per_slice

    def file_filter(self) -> FileFilter:
        return FileFilter(max_file_bytes=self.max_file_bytes, max_line_chars=self.max_line_chars)

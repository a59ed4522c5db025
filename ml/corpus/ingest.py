"""Read a slice's files and cut them into deduplicated code units, on all cores."""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from ml.corpus.filters import FileFilter
from ml.corpus.sources import SourceSpec, iter_files
from ml.languages import get_language
from ml.units import CodeUnit


@dataclass
class FileRow:
    source: str
    path: str
    sha256: str
    size_bytes: int
    text: str | None  # None when skipped
    skip_reason: str | None


@dataclass
class SliceFiles:
    rows: list[FileRow] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def read_files(
    language: str, spec: SourceSpec, limit: int | None = None, file_filter: FileFilter | None = None
) -> SliceFiles:
    lang = get_language(language)
    file_filter = file_filter or FileFilter()
    out = SliceFiles()
    for raw in iter_files(spec, lang.globs, lang.excludes, limit=limit, skipped=out.skipped):
        text, reason = file_filter.classify(raw.data)
        if reason:
            out.skipped[reason] += 1
        out.rows.append(
            FileRow(raw.source, raw.path, hashlib.sha256(raw.data).hexdigest(), len(raw.data), text, reason)
        )
    return out


def _extract_chunk(args: tuple[str, int, list[tuple[str, str, str]]]) -> tuple[list[CodeUnit], Counter]:
    language, max_chars, items = args
    extractor = get_language(language).extractor
    units: list[CodeUnit] = []
    skipped: Counter = Counter()
    for text, path, source in items:
        try:
            ext = extractor(text, path, source, language, max_chars)
        except RecursionError:  # pathological nesting: count it, never fail the slice
            skipped["syntax_error"] += 1
            continue
        units.extend(ext.units)
        skipped.update(ext.skipped)
    return units, skipped


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def chunked(items: list, n_chunks: int) -> Iterable[list]:
    size = max(1, -(-len(items) // max(1, n_chunks)))
    for i in range(0, len(items), size):
        yield items[i : i + size]


def extract_units(
    language: str, files: list[FileRow], max_chars: int = 20000, workers: int | None = None
) -> tuple[list[CodeUnit], Counter]:
    """Units of every usable file, exact duplicates (same normalized hash) dropped and counted."""
    workers = workers or default_workers()
    items = [(f.text, f.path, f.source) for f in files if f.text is not None]
    # Many small chunks balance the load: file sizes vary by orders of magnitude.
    tasks = [(language, max_chars, chunk) for chunk in chunked(items, workers * 16)]
    skipped: Counter = Counter()
    found: list[CodeUnit] = []
    if workers == 1 or len(tasks) <= 1:
        results = map(_extract_chunk, tasks)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_extract_chunk, tasks)
    try:
        for units, skips in results:
            found.extend(units)
            skipped.update(skips)
    finally:
        if workers > 1 and len(tasks) > 1:
            pool.shutdown()
    seen: set[str] = set()
    unique: list[CodeUnit] = []
    for u in found:
        if u.id in seen:
            skipped["duplicate"] += 1
            continue
        seen.add(u.id)
        unique.append(u)
    return unique, skipped

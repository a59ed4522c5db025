"""Ingest a whole language slice: read, filter and cut files into units on all cores.

    python bench/ingest.py --lang python [--src dir:PATH] [--workers N]

Last line: {"files", "units", "seconds", "units_per_s", "workers", "peak_rss_mb"}.
"""

from __future__ import annotations

import argparse
import time

from _common import emit, peak_rss_mb

from ml.corpus.ingest import default_workers, extract_units, read_files
from ml.corpus.sources import parse_spec
from ml.languages import get_language


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lang", default="python")
    ap.add_argument("--src", default="default", help="source spec (dir:, zip:, hf:) or 'default'")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--limit", type=int, default=None, help="at most this many files")
    args = ap.parse_args()

    lang = get_language(args.lang)
    spec = lang.default_source() if args.src == "default" else parse_spec(args.src)
    start = time.perf_counter()
    files = read_files(args.lang, spec, args.limit)
    read_s = time.perf_counter() - start
    units, skipped = extract_units(args.lang, files.rows, workers=args.workers)
    seconds = time.perf_counter() - start
    print(f"source {spec.label}: read {len(files.rows)} files in {read_s:.1f}s; skipped files "
          f"{dict(files.skipped)}; skipped units {dict(skipped)}")
    emit(
        {
            "files": len(files.rows),
            "units": len(units),
            "seconds": round(seconds, 2),
            "units_per_s": round(len(units) / seconds, 1) if seconds else 0.0,
            "workers": args.workers,
            "peak_rss_mb": peak_rss_mb(),
        }
    )


if __name__ == "__main__":
    main()

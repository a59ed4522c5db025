"""Phase 1 rows (renamed, serialized functions) and Phase 2 rows (docstring -> AST tokens)."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ml.codec.tokens import tokens_to_text
from ml.corpus.ingest import chunked, default_workers
from ml.languages import get_language


@dataclass(frozen=True)
class AstRowConfig:
    mode: str = "compact"
    token_cap: int = 4096
    # Docstrings longer than this are cut at a paragraph: the summary is what a prompt looks like.
    max_nl_chars: int = 600


def _ast_rows_chunk(args: tuple[str, AstRowConfig, list[dict]]) -> tuple[list[dict], Counter]:
    language, cfg, units = args
    lang = get_language(language)
    codec = lang.codec
    rows: list[dict] = []
    skipped: Counter = Counter()
    for u in units:
        try:
            renaming = lang.renamer(u["code"])
        except Exception:  # a unit the renamer cannot handle is counted, never fatal
            skipped["rename_failed"] += 1
            continue
        try:
            tokens = codec.encode(renaming.code, cfg.mode)
        except Exception:
            skipped["encode_failed"] += 1
            continue
        if len(tokens) > cfg.token_cap:
            skipped["over_token_cap"] += 1
            continue
        if not codec.verify(renaming.code, tokens, cfg.mode):
            skipped["roundtrip_failed"] += 1
            continue
        rows.append(
            {
                "id": u["id"],
                "language": language,
                "name": u["name"],
                "source": u["source"],
                "path": u["path"],
                "docstring": u["docstring"],
                "renamed_code": renaming.code,
                "rename_map": json.dumps(renaming.mapping, sort_keys=True),
                "mode": cfg.mode,
                "ast_text": tokens_to_text(tokens),
                "n_tokens": len(tokens),
            }
        )
    return rows, skipped


def _map_chunks(fn, language: str, cfg, rows: list[dict], workers: int | None):
    workers = workers or default_workers()
    tasks = [(language, cfg, chunk) for chunk in chunked(rows, workers * 8)]
    out: list[dict] = []
    skipped: Counter = Counter()
    if workers == 1 or len(tasks) <= 1:
        results = list(map(fn, tasks))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(fn, tasks))
    for r, s in results:
        out.extend(r)
        skipped.update(s)
    return out, skipped


def build_ast_rows(
    language: str, units: list[dict], cfg: AstRowConfig = AstRowConfig(), workers: int | None = None
) -> tuple[list[dict], Counter]:
    """Rename and serialize each unit; a unit whose tokens do not decode back exactly is dropped and counted."""
    return _map_chunks(_ast_rows_chunk, language, cfg, units, workers)


def clean_docstring(doc: str, max_chars: int) -> str:
    doc = doc.strip()
    if len(doc) <= max_chars:
        return doc
    head = doc.split("\n\n", 1)[0].strip()
    return head if len(head) <= max_chars else head[:max_chars].rsplit(" ", 1)[0]


def _pair_rows_chunk(args: tuple[str, AstRowConfig, list[dict]]) -> tuple[list[dict], Counter]:
    language, cfg, rows = args
    lang = get_language(language)
    codec = lang.codec
    pairs: list[dict] = []
    skipped: Counter = Counter()
    for r in rows:
        nl = clean_docstring(r["docstring"] or "", cfg.max_nl_chars)
        if not nl:
            skipped["no_docstring"] += 1
            continue
        target = lang.nl_target(r["renamed_code"])
        if target is None:
            skipped["docstring_only"] += 1
            continue
        tokens = codec.encode(target, cfg.mode)
        if len(tokens) > cfg.token_cap:
            skipped["over_token_cap"] += 1
            continue
        pairs.append(
            {
                "id": r["id"],
                "language": language,
                "name": r["name"],
                "nl": nl,
                "target_code": target,
                "mode": cfg.mode,
                "ast_text": tokens_to_text(tokens),
                "n_tokens": len(tokens),
            }
        )
    return pairs, skipped


def build_nl_ast_pairs(
    language: str, ast_rows: list[dict], cfg: AstRowConfig = AstRowConfig(), workers: int | None = None
) -> tuple[list[dict], Counter]:
    """Docstring -> AST-token pairs from Phase 1 rows; units without a docstring are counted as skipped."""
    return _map_chunks(_pair_rows_chunk, language, cfg, ast_rows, workers)


def is_heldout(unit_id: str, fraction: float) -> bool:
    """A stable split by content hash: the same function is held out in every run and every phase."""
    return int(unit_id[:8], 16) / 0xFFFFFFFF < fraction


def split_heldout(rows: list[dict], fraction: float) -> tuple[list[dict], list[dict]]:
    train = [r for r in rows if not is_heldout(r["id"], fraction)]
    held = [r for r in rows if is_heldout(r["id"], fraction)]
    return train, held

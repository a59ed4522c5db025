"""Phase 1 rows (renamed, serialized functions) and Phase 2 rows (docstring -> AST tokens).

Phase 1 is "AST only, no natural language": a row's tree is the function *without* its docstrings (Python: of the
function and of every nested def/class) and without comments (JavaScript/Java: comment nodes inside the unit), see
:func:`without_natural_language`. Phase 2 keeps the docstring as the prompt (the ``docstring`` column).

The split is data: each row carries ``group_key`` = :func:`ml.splits.code_key` of its renamed, stripped code (renamed
copies share it) and ``split`` = :func:`ml.splits.split_of` of that key, decided once here; the Phase 2 pairs copy
both from their Phase 1 row, so a function is in the same split in both phases. Training reads ``train`` (validation
``dev``), the evaluation ``test``.
"""

from __future__ import annotations

import ast
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from ml.codec.tokens import tokens_to_text
from ml.corpus.ingest import chunked, default_workers
from ml.languages import get_language
from ml.splits import SPLITS, code_key, split_of


@dataclass(frozen=True)
class AstRowConfig:
    mode: str = "compact"
    token_cap: int = 4096
    # Docstrings longer than this are cut at a paragraph: the summary is what a prompt looks like.
    max_nl_chars: int = 600


_DOC_HOLDERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _python_without_docstrings(code: str) -> str | None:
    """The unit without the docstring of any function or class in it (a nested body left empty gets ``pass``);
    None when the unit's own function is nothing but its docstring."""
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, _DOC_HOLDERS) and ast.get_docstring(node, clean=False) is not None:
            if len(node.body) == 1 and node is tree.body[0]:
                return None
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _treesitter_without_comments(code: str, language: str) -> str:
    """The unit with every comment node cut out: a comment that spans or ends a line becomes a newline (JavaScript's
    automatic semicolons read newlines), any other a space."""
    from ml.codec.treesitter_codec import COMMENTS, LINE_COMMENTS, parse_unit_wrapped

    node, src, offset = parse_unit_wrapped(code, language)
    cuts = []
    stack = [node]
    while stack:
        n = stack.pop()
        if n.type in COMMENTS[language]:
            text = src[n.start_byte:n.end_byte]
            # as the codec reads them: a line comment ("comment" is JavaScript's line and block type) ends its line
            line = n.type in LINE_COMMENTS[language] and (n.type != "comment" or text.startswith(b"//"))
            ends_line = line or b"\n" in text
            cuts.append((n.start_byte - offset, n.end_byte - offset, b"\n" if ends_line else b" "))
            continue
        stack.extend(n.children)
    raw = code.encode("utf-8", "surrogatepass")
    for start, end, gap in sorted(cuts, reverse=True):
        raw = raw[:start] + gap + raw[end:]
    return raw.decode("utf-8", "surrogatepass")


def without_natural_language(language: str, code: str) -> str | None:
    """The Phase 1 form of a unit: its code without docstrings and comments (the natural language Phase 1 must not
    see); None when nothing but natural language was there. String literals that are data stay."""
    from ml.codec.treesitter_codec import LANGUAGES as TREESITTER_LANGUAGES

    if language == "python":  # ast keeps no comments; docstrings are string statements
        return _python_without_docstrings(code)
    if language in TREESITTER_LANGUAGES:
        return _treesitter_without_comments(code, language)
    raise ValueError(f"no natural-language stripping for {language!r}: add it next to its codec")


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
            code = without_natural_language(language, renaming.code)
        except Exception:
            skipped["strip_failed"] += 1
            continue
        if code is None:
            skipped["docstring_only"] += 1
            continue
        try:
            tokens = codec.encode(code, cfg.mode)
        except Exception:
            skipped["encode_failed"] += 1
            continue
        if len(tokens) > cfg.token_cap:
            skipped["over_token_cap"] += 1
            continue
        if not codec.verify(code, tokens, cfg.mode):
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
                "renamed_code": code,  # renamed, docstrings and comments removed: what ast_text encodes
                "rename_map": json.dumps(renaming.mapping, sort_keys=True),
                "mode": cfg.mode,
                "ast_text": tokens_to_text(tokens),
                "n_tokens": len(tokens),
                **split_columns(code),
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
    """Rename, strip of natural language, serialize and split each unit; a unit whose tokens do not decode back
    exactly is dropped and counted."""
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
                # the Phase 1 row's own: a function is in one split in both phases
                "group_key": r["group_key"],
                "split": r["split"],
            }
        )
    return pairs, skipped


def build_nl_ast_pairs(
    language: str, ast_rows: list[dict], cfg: AstRowConfig = AstRowConfig(), workers: int | None = None
) -> tuple[list[dict], Counter]:
    """Docstring -> AST-token pairs from Phase 1 rows; units without a docstring are counted as skipped."""
    return _map_chunks(_pair_rows_chunk, language, cfg, ast_rows, workers)


def split_columns(code: str) -> dict[str, str]:
    """``group_key`` and ``split`` of a row whose code is ``code`` (renamed and stripped)."""
    key = code_key(code)
    return {"group_key": key, "split": split_of(key)}


def split_rows(rows: Sequence[Mapping], split: str) -> list[Mapping]:
    """The rows of ``split``; rows made before the split was a column are refused rather than guessed."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if rows and "split" not in rows[0]:
        raise ValueError("rows have no split column: re-materialize ast_corpus and nl_ast_pairs")
    return [r for r in rows if r["split"] == split]


def evaluation_rows(rows: Sequence[Mapping], split: str) -> list[Mapping]:
    """The rows of ``split`` that an evaluation scores: one per group key (renamed copies are one item, not several
    correlated ones), in ``id`` order (a content hash: a fixed, unbiased order across files)."""
    seen: set[str] = set()
    out = []
    for r in sorted(split_rows(rows, split), key=lambda r: r["id"]):
        if r["group_key"] not in seen:
            seen.add(r["group_key"])
            out.append(r)
    return out


def is_heldout(unit_id: str, fraction: float) -> bool:
    """A stable split by content hash: the same function is held out in every run and every phase."""
    return int(unit_id[:8], 16) / 0xFFFFFFFF < fraction

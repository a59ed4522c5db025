"""Judging generated AST token sequences, per language.

- *valid*: the sequence decodes to a tree and that tree is a program the language accepts
  (Python: ``compile()`` of the decoded module; JavaScript/Java: the decoded source re-parses as
  one unit with no syntax error).
- *exact match* (alpha-normalized): prediction and reference are alpha-renamed again from their
  decoded source, so two functions that differ only in the names of bound variables match.
- *tree similarity*: Dice coefficient of the multisets of depth-one productions
  ``parent_type -> (child types...)`` of the two trees (a bag-of-subtrees measure, 1.0 for equal
  trees, 0.0 when no production is shared). An invalid prediction scores 0.
"""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from ml.codec.tokens import text_to_tokens
from ml.languages import get_language


@dataclass
class Judged:
    valid: bool
    source: str | None  # decoded source text, when valid
    productions: Counter | None


def _python_productions(tree: ast.AST) -> Counter:
    out: Counter = Counter()
    for node in ast.walk(tree):
        if isinstance(node, ast.expr_context):  # Load/Store/Del follow from position
            continue
        kids = tuple(type(c).__name__ for c in ast.iter_child_nodes(node) if not isinstance(c, ast.expr_context))
        out[(type(node).__name__, kids)] += 1
    return out


def _ts_productions(node) -> Counter:
    out: Counter = Counter()
    stack = [node]
    while stack:
        n = stack.pop()
        kids = [c for c in n.children if c.is_named]
        out[(n.type, tuple(c.type for c in kids))] += 1
        stack.extend(kids)
    return out


def judge(language: str, ast_text: str, mode: str = "compact") -> Judged:
    """Decode one generated sequence and say whether it is a valid program (the slice's ``LanguageSpec.judge``)."""
    return get_language(language).judge(ast_text, mode)


def judge_python(ast_text: str, mode: str = "compact") -> Judged:
    """Python: the decoded module compiles."""
    from ml.codec.python_ast import decode_tree

    tokens = text_to_tokens(ast_text)
    try:
        tree = ast.fix_missing_locations(decode_tree(tokens, mode))
        compile(tree, "<generated>", "exec")
        return Judged(True, ast.unparse(tree), _python_productions(tree))
    except (ValueError, SyntaxError, TypeError, RecursionError):
        return Judged(False, None, None)


def judge_treesitter(language: str, ast_text: str, mode: str = "compact") -> Judged:
    """A tree-sitter slice: the decoded source re-parses as one unit with no syntax error."""
    from ml.codec.treesitter_codec import parse_unit

    codec, tokens = get_language(language).codec, text_to_tokens(ast_text)
    try:
        source = codec.decode(tokens, mode)
        node = parse_unit(source, language)
    except (ValueError, RecursionError):
        return Judged(False, None, None)
    return Judged(True, source, _ts_productions(node))


def normalized_form(language: str, source: str) -> str:
    """A canonical string of the tree after alpha-renaming: equal for alpha-equivalent functions."""
    renamed = get_language(language).renamer(source).code
    if language == "python":
        return ast.dump(ast.parse(renamed))
    from ml.codec.treesitter_codec import TreeSitterCodec

    return " ".join(TreeSitterCodec(language).encode(renamed, "compact"))


def tree_similarity(a: Counter | None, b: Counter | None) -> float:
    if not a or not b:
        return 0.0
    shared = sum((a & b).values())
    return 2.0 * shared / (sum(a.values()) + sum(b.values()))


@dataclass
class PairScore:
    valid: bool
    exact: bool
    similarity: float
    prediction_source: str | None


def score_prediction(language: str, predicted_text: str, reference_text: str, mode: str = "compact") -> PairScore:
    pred = judge(language, predicted_text, mode)
    ref = judge(language, reference_text, mode)
    if not pred.valid or not ref.valid:
        return PairScore(pred.valid, False, 0.0, pred.source)
    try:
        exact = normalized_form(language, pred.source) == normalized_form(language, ref.source)
    except Exception:  # a decodable but unrenameable prediction (e.g. no function at all) is not a match
        exact = False
    return PairScore(True, exact, tree_similarity(pred.productions, ref.productions), pred.source)

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

from ml.codec.judge import Judged
from ml.languages import get_language


def judge(language: str, ast_text: str, mode: str = "compact") -> Judged:
    """Decode one generated sequence and say whether it is a valid program (the slice's ``LanguageSpec.judge``)."""
    return get_language(language).judge(ast_text, mode)


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

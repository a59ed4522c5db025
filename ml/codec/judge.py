"""Does a generated AST token sequence decode to a program its language accepts: the judges each language
registers in ``ml.languages`` (Python: ``compile()`` of the decoded module; JavaScript/Java: the decoded source
re-parses as one unit with no syntax error), with the tree's depth-one productions for the tree similarity of
``ml.evaluation.ast_metrics``."""

from __future__ import annotations

import ast
from collections import Counter
from dataclasses import dataclass

from ml.codec.base import Codec
from ml.codec.tokens import text_to_tokens


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


def judge_treesitter(codec: Codec, language: str, ast_text: str, mode: str = "compact") -> Judged:
    """A tree-sitter slice (``codec`` is its codec): the decoded source re-parses as one unit with no syntax
    error."""
    from ml.codec.treesitter_codec import parse_unit

    tokens = text_to_tokens(ast_text)
    try:
        source = codec.decode(tokens, mode)
        node = parse_unit(source, language)
    except (ValueError, RecursionError):
        return Judged(False, None, None)
    return Judged(True, source, _ts_productions(node))

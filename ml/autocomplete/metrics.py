"""Completion metrics: exact match and edit similarity of a middle, syntax validity of prefix + middle + suffix,
syntax-aware truncation (SAFIM, Gong et al. 2024: keep the shortest line-prefix of a generated middle with which
the whole program parses), and latency percentiles."""

from __future__ import annotations

import ast
from collections.abc import Sequence


def exact_match(predicted: str, expected: str) -> bool:
    """Equal up to trailing whitespace on each line and at the end (an editor inserts either)."""
    def norm(s: str) -> str:
        return "\n".join(line.rstrip() for line in s.rstrip().splitlines())

    return norm(predicted) == norm(expected)


def levenshtein(a: str, b: str) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def edit_similarity(predicted: str, expected: str) -> float:
    """1 - Levenshtein distance / the longer length (1.0 for two empty strings), on stripped text."""
    p, e = predicted.strip(), expected.strip()
    if not p and not e:
        return 1.0
    return 1.0 - levenshtein(p, e) / max(len(p), len(e))


def syntax_valid(code: str, language: str) -> bool:
    """Python: ``ast.parse``; JavaScript/Java: tree-sitter with no ERROR or MISSING node, as one unit (a Java
    method inside a class) or, failing that, as a whole program."""
    if language == "python":
        try:
            ast.parse(code)
        except (SyntaxError, ValueError):
            return False
        return True
    from ml.codec.treesitter_codec import get_parser, parse_unit

    try:
        parse_unit(code, language)
        return True
    except ValueError:
        return not get_parser(language).parse(code.encode()).root_node.has_error


def truncate_syntax_aware(prefix: str, middle: str, suffix: str, language: str) -> str:
    """The shortest cut of ``middle`` at a line end (or all of it) with which prefix + middle + suffix parses;
    ``middle`` unchanged when no cut does."""
    cuts = [i + 1 for i, ch in enumerate(middle) if ch == "\n"] + [len(middle)]
    for end in cuts:
        if middle[:end].strip() and syntax_valid(prefix + middle[:end] + suffix, language):
            return middle[:end]
    return middle


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in [0, 100]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])

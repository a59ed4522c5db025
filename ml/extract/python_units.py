"""Function-level units from Python files, through the standard ``ast`` module."""

from __future__ import annotations

import ast
import warnings

from ml.extract import Extraction
from ml.units import CodeUnit, normalized_hash

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def _dedent(lines: list[str], col: int) -> str:
    # Remove the def's own indentation only; continuation lines of a multi-line string that sit
    # further left are left alone so the unit still parses.
    prefix_len = col
    out = []
    for line in lines:
        head = line[:prefix_len]
        out.append(line[prefix_len:] if head.strip() == "" and len(head) == prefix_len else line)
    return "".join(out)


def _leading_comment(lines: list[str], first_line: int) -> str:
    """``# ...`` lines right above a def, for functions without a docstring."""
    i = first_line - 2
    found = []
    while i >= 0 and lines[i].lstrip().startswith("#"):
        found.append(lines[i].lstrip().lstrip("#").strip())
        i -= 1
    return "\n".join(reversed(found)).strip()


def _walk_units(body: list[ast.stmt], prefix: str):
    for node in body:
        if isinstance(node, _FUNCS):
            yield node, prefix + node.name
        elif isinstance(node, ast.ClassDef):
            yield from _walk_units(node.body, f"{prefix}{node.name}.")


def extract_units(text: str, path: str, source: str, language: str = "python", max_chars: int = 20000) -> Extraction:
    out = Extraction()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old files are not our concern
            tree = ast.parse(text)
    except (RecursionError, MemoryError):
        # CPython's parser gives up on deep nesting (``1+1+...``, ``a.b.b...``) with these: valid code, too deep.
        out.skip("too_deep")
        return out
    except (SyntaxError, ValueError):
        out.skip("syntax_error")
        return out
    lines = text.splitlines(keepends=True)
    for node, qualname in _walk_units(tree.body, ""):
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        col = node.decorator_list[0].col_offset - 1 if node.decorator_list else node.col_offset
        code = _dedent(lines[first - 1 : node.end_lineno], max(col, 0))
        if len(code) > max_chars:
            out.skip("oversized")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                unit_tree = ast.parse(code)
        except (RecursionError, MemoryError):
            out.skip("too_deep")
            continue
        except (SyntaxError, ValueError):
            out.skip("syntax_error")
            continue
        fn = unit_tree.body[0]
        doc = ast.get_docstring(fn) if isinstance(fn, _FUNCS) else None
        out.units.append(
            CodeUnit(
                id=normalized_hash(code),
                language=language,
                source=source,
                path=path,
                name=qualname,
                code=code,
                docstring=doc if doc else _leading_comment(lines, first),
                start_line=first,
                end_line=node.end_lineno or first,
            )
        )
    return out


def without_docstring(code: str) -> str | None:
    """The function with its docstring removed (the Phase 2 target); None if nothing else is left."""
    tree = ast.parse(code)
    fn = tree.body[0]
    if not isinstance(fn, _FUNCS) or ast.get_docstring(fn, clean=False) is None:
        return code
    if len(fn.body) == 1:
        return None
    fn.body = fn.body[1:]
    return ast.unparse(tree)

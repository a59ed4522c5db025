"""Apply one ast-grep rule and its fix to a piece of code. Standard library + ``ast_grep_py`` only, because the
sandbox copies this file into its working directory and runs it there on rules the project did not write
(:mod:`ml.srl.environment`). The task miner calls it in-process on the family catalog's own rules.

ast-grep-py ignores a ``fix:`` key in its config, so the fix template is applied here: each ``$NAME`` becomes the
text of the metavariable's match, each ``$$$NAME`` the source span of its matches (separators and layout kept),
and the match is replaced through ``replace`` / ``commit_edits``.
"""

from __future__ import annotations

import json
import re

_METAVARIABLE = re.compile(r"\$\$\$([A-Z_][A-Z0-9_]*)|\$([A-Z_][A-Z0-9_]*)")


class RuleError(ValueError):
    """The rule is not one ast-grep accepts (bad pattern, unknown key, bad constraint)."""


def _fill(fix: str, match, source: str) -> str:
    def one(found: re.Match) -> str:
        if found.group(1):
            nodes = match.get_multiple_matches(found.group(1))
            if not nodes:
                return ""
            start, end = nodes[0].range().start.index, nodes[-1].range().end.index
            return source[start:end]
        node = match.get_match(found.group(2))
        return node.text() if node is not None else found.group(0)

    return _METAVARIABLE.sub(one, fix)


def apply(code: str, language: str, action: dict) -> tuple[str, int]:
    """``code`` with every match of ``action["rule"]`` replaced by ``action["fix"]``; and the number of matches."""
    from ast_grep_py import SgRoot

    config = {"rule": action["rule"]}
    if action.get("constraints"):
        config["constraints"] = action["constraints"]
    root = SgRoot(code, language).root()
    try:
        matches = root.find_all(config)
    except BaseException as exc:  # ast-grep raises plain Exception (and pyo3 panics) for a rule it rejects
        raise RuleError(f"{type(exc).__name__}: {exc}") from None
    # ast-grep-py's Pos.index counts characters, so the $$$ spans are cut from the str
    edits = [m.replace(_fill(action["fix"], m, code)) for m in matches]
    return (root.commit_edits(edits) if edits else code), len(matches)


def run(job: dict) -> None:
    """Sandbox entry point: ``{"code", "language", "action"}`` in, one JSON line on stdout."""
    try:
        rewritten, matches = apply(job["code"], job["language"], job["action"])
        print(json.dumps({"rewritten": rewritten, "matches": matches}))
    except RuleError as exc:
        print(json.dumps({"rule_error": str(exc)[:500]}))

"""Mine rewrite tasks from the corpus: a task is a code unit on which a rewrite family's rule matches, with the
family's instruction and the rewritten code as the expected answer. Its ``split`` (train / dev / test) is its
family's, decided once in the catalog (:mod:`ml.srl.families`): the family is the group key, so the leak check
counts families that occur in train and in dev or test.

The family rules are the project's own, so they are applied in-process (:func:`ml.srl.apply_rule.apply`), not in
the sandbox that runs the student's rules.
"""

from __future__ import annotations

import collections
import hashlib
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ml.autocomplete.metrics import syntax_valid
from ml.srl.apply_rule import RuleError, apply
from ml.srl.families import RewriteFamily, families_for

SKIP_REASONS = ("too_long", "original_does_not_parse", "rule_error", "unchanged", "rewrite_does_not_parse")

_METAVARIABLE = re.compile(r"\$\$\$[A-Z_][A-Z0-9_]*|\$[A-Z_][A-Z0-9_]*")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class MinedTasks:
    tasks: list[dict]
    # reason -> count; too_long and original_does_not_parse count units, the other reasons (unit, family) pairs
    skipped: collections.Counter = field(default_factory=collections.Counter)


def task_id(family: str, unit_id: str) -> str:
    return hashlib.sha1(f"{family}\0{unit_id}".encode()).hexdigest()[:12]


def _required_words(family: RewriteFamily) -> tuple[str, ...]:
    """Identifiers and keywords of the pattern outside its metavariables. A match reproduces every leaf of the
    pattern verbatim, so code lacking one of these words cannot match: checking them first skips the parse."""
    return tuple(_WORD.findall(_METAVARIABLE.sub(" ", family.rule.get("pattern", ""))))


def mine_tasks(units: Iterable[dict], language: str, families: Sequence[RewriteFamily] | None = None, *,
               max_per_family: int = 40, max_code_chars: int = 1200, seed: int = 0) -> MinedTasks:
    """Tasks for ``language``: at most ``max_per_family`` per family, picked by a seeded shuffle of the matching
    units (sorted by unit id first, so the pick does not depend on the input order); sorted by (family, id)."""
    families = list(families_for(language) if families is None else families)
    if foreign := [f.name for f in families if f.language != language]:
        raise ValueError(f"families not for {language}: {', '.join(foreign)}")
    skipped: collections.Counter = collections.Counter()
    candidates: dict[str, list[dict]] = {f.name: [] for f in families}
    words = {f.name: _required_words(f) for f in families}

    for unit in sorted(units, key=lambda u: str(u["id"])):
        code = unit["code"]
        if len(code) > max_code_chars:
            skipped["too_long"] += 1
            continue
        if not syntax_valid(code, language):
            skipped["original_does_not_parse"] += 1
            continue
        for family in families:
            if not all(word in code for word in words[family.name]):
                continue
            try:
                expected, matches = apply(code, language, family.action())
            except RuleError:
                skipped["rule_error"] += 1
                continue
            if not matches:
                continue
            if expected == code:
                skipped["unchanged"] += 1
            elif not syntax_valid(expected, language):
                skipped["rewrite_does_not_parse"] += 1
            else:
                candidates[family.name].append(_task(unit, language, family, expected, matches))

    tasks = []
    for family in families:
        chosen = candidates[family.name]
        # one generator per family, so adding or dropping a family leaves the others' picks alone
        random.Random(f"{seed}/{family.name}").shuffle(chosen)
        tasks += chosen[:max_per_family]
    tasks.sort(key=lambda t: (t["family"], t["id"]))
    return MinedTasks(tasks, skipped)


def _task(unit: dict, language: str, family: RewriteFamily, expected: str, matches: int) -> dict:
    return {
        "id": task_id(family.name, str(unit["id"])),
        "language": language,
        "family": family.name,
        "split": family.split,
        "unit_id": unit["id"],
        "path": unit.get("path"),
        "name": unit.get("name"),
        "instruction": family.instruction,
        "code": unit["code"],
        "expected": expected,
        "matches": matches,
    }


def split_counts(tasks: Iterable[dict]) -> dict[str, int]:
    """Number of tasks per split."""
    return dict(collections.Counter(t["split"] for t in tasks))

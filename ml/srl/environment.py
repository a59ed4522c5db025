"""Where a rewrite step meets the code: the action runs in the sandbox and an environment report says what happened.

A rule the project did not write (the teacher's, the student's) is applied by :mod:`ml.srl.apply_rule` inside
:mod:`ml.sandbox` (a subprocess with a timeout, rlimits, a temporary directory, no network). For Python, the same
sandboxed program then calls the original and the rewritten function on generated inputs and compares what they
return or raise. A rule that hangs or explodes is killed by the sandbox and reported (``status``), never raised.

The report: ``status`` (``ok`` | ``rule_error`` | ``timeout`` | ``crashed``), ``matches``, ``rewritten``, ``diff``
(unified, cut), ``parses`` (the rewritten code, by the slice's parser), ``equals_expected``, ``behaviour``
(``same`` | ``differs`` | ``not_runnable`` | ``not_checked``) and ``error``.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ml import sandbox
from ml.autocomplete.metrics import syntax_valid
from ml.srl import apply_rule

_APPLY_RULE_SOURCE = Path(apply_rule.__file__).read_text()
MAX_DIFF_CHARS = 2000
BEHAVIOUR_STATUSES = ("same", "differs", "not_runnable", "not_checked")

# Runs inside the sandbox after the rewrite, on Python code: define the function from each version, call both on
# the same generated arguments, compare outcomes (return value repr, or the exception's type) on the arguments the
# original accepts (`len(x) == 0` -> `not x` changes what `x = 0` raises, not what a valid call returns). Each call
# has its own CPU alarm so that one looping input does not hide the others.
_BEHAVIOUR_PROGRAM = r'''
import ast, itertools, json, re, signal, sys, types

POOL = [0, 1, -3, 7, 2.5, "", "abc", "a b", [], [1, 2], [3, 1, 2], {}, {"a": 1}, (1, 2), None, True, False, b"x"]

def _load(code):
    tree = ast.parse(code)
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef,))]
    if len(funcs) != 1 or funcs[0].decorator_list:
        return None, None
    f = funcs[0]
    names = [a.arg for a in f.args.posonlyargs + f.args.args]
    if names[:1] in (["self"], ["cls"]) or f.args.kwonlyargs and any(d is None for d in f.args.kw_defaults):
        return None, None
    space = {"__name__": "candidate"}
    exec(compile(tree, "<candidate>", "exec"), space)
    return space[f.name], len(names) - len(f.args.defaults)

class _Slow(Exception):
    pass

def _alarm(*_):
    raise _Slow()

def _outcome(fn, args):
    signal.setitimer(signal.ITIMER_REAL, 0.25)
    try:
        value = fn(*[a.copy() if hasattr(a, "copy") else a for a in args])
        if isinstance(value, types.GeneratorType):
            value = list(itertools.islice(value, 50))
        return "ok:" + re.sub(r" at 0x[0-9a-f]+", "", repr(value))[:500]
    except _Slow:
        return "timeout"
    except BaseException as exc:
        return "raise:" + type(exc).__name__
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

def behaviour(original, rewritten, cases=24):
    signal.signal(signal.SIGALRM, _alarm)
    try:
        before, arity = _load(original)
        after, arity_after = _load(rewritten)
    except BaseException:
        return "not_runnable", 0
    if before is None or after is None or arity != arity_after or arity > 3:
        return "not_runnable", 0
    combos = list(itertools.product(POOL, repeat=arity))
    step = max(1, len(combos) // cases)
    ran = slow = 0
    for args in combos[::step][:cases]:
        a = _outcome(before, args)
        if a == "timeout":  # a function that loops on these inputs says nothing in reasonable time
            slow += 1
            if slow == 2:
                break
            continue
        if not a.startswith("ok:"):  # inputs the original rejects say nothing about a rewrite of valid code
            continue
        ran += 1
        b = _outcome(after, args)
        if a != b:
            return "differs", ran
    return ("same" if ran else "not_runnable"), ran
'''


@dataclass
class EnvReport:
    status: str
    matches: int = 0
    rewritten: str = ""
    diff: str = ""
    parses: bool = False
    equals_expected: bool = False
    behaviour: str = "not_checked"
    behaviour_cases: int = 0
    error: str | None = None
    seconds: float = 0.0

    @property
    def executed(self) -> bool:
        """The action did the task: it ran, the result parses, equals the expected code and behaves the same."""
        return self.status == "ok" and self.parses and self.equals_expected and self.behaviour != "differs"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _program(code: str, language: str, action: dict, check_behaviour: bool) -> str:
    job = json.dumps({"code": code, "language": language, "action": action})
    program = (f"import json, sys\nimport apply_rule\njob = json.loads({job!r})\napply_rule.run(job)\n"
               "sys.stdout.flush()\n")
    if not check_behaviour:
        return program
    # the rewrite's line is out before the functions run: a looping function still leaves the rewrite's result
    return program + _BEHAVIOUR_PROGRAM + """
import contextlib, io
try:
    rewritten = apply_rule.apply(job["code"], job["language"], job["action"])[0]
except apply_rule.RuleError:
    sys.exit(0)
with contextlib.redirect_stdout(io.StringIO()):
    verdict, ran = behaviour(job["code"], rewritten)
print(json.dumps({"behaviour": verdict, "cases": ran}))
"""


def _diff(before: str, after: str) -> str:
    text = "".join(difflib.unified_diff(before.splitlines(True), after.splitlines(True), "before", "after", n=1))
    return text[:MAX_DIFF_CHARS]


def _report(result: sandbox.SandboxResult, code: str, language: str, expected: str | None) -> EnvReport:
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    applied = next((x for x in lines if "rewritten" in x or "rule_error" in x), None)
    if applied is None:
        status = "timeout" if result.status == "timeout" else "crashed"
        why = (result.error_type or result.status) + (": " + result.stderr.strip()[-300:] if result.stderr else "")
        return EnvReport(status=status, error=why, seconds=result.seconds)
    if "rule_error" in applied:
        return EnvReport(status="rule_error", error=applied["rule_error"], seconds=result.seconds)
    rewritten = applied["rewritten"]
    judged = next((x for x in lines if "behaviour" in x), None)
    if judged is not None:
        behaviour, cases = judged["behaviour"], judged["cases"]
    else:  # behaviour not asked for, or the sandbox stopped the check (a looping function): nothing known
        behaviour, cases = ("not_runnable" if result.status == "timeout" else "not_checked"), 0
    return EnvReport(
        status="ok", matches=int(applied["matches"]), rewritten=rewritten, diff=_diff(code, rewritten),
        parses=syntax_valid(rewritten, language),
        equals_expected=expected is not None and rewritten.strip() == expected.strip(),
        behaviour=behaviour, behaviour_cases=cases, seconds=result.seconds,
    )


def execute_actions(
    jobs: Sequence[dict[str, Any]],
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int = 2,
    check_behaviour: bool = True,
) -> list[EnvReport]:
    """Run each ``{"code", "language", "action", "expected"}`` job's action in the sandbox; one report per job, in
    order. The behaviour check runs for Python jobs when ``check_behaviour``."""
    programs = [_program(j["code"], j["language"], j["action"], check_behaviour and j["language"] == "python")
                for j in jobs]
    results = sandbox.run_many(programs, workers=workers, timeout_s=timeout_s, memory_mb=memory_mb,
                               files={"apply_rule.py": _APPLY_RULE_SOURCE})
    return [_report(r, j["code"], j["language"], j.get("expected")) for r, j in zip(results, jobs, strict=True)]

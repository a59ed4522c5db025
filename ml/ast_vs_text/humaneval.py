"""HumanEval as docstring → function for models trained on alpha-renamed functions.

Both arms see what they trained on: the problem's docstring (cleaned as the training docstrings were), then the
start of the function in their own representation, with the names alpha-renamed as in training (``var_0`` for the
function, ``var_1``... for its parameters). The text arm continues ``def var_0(var_1, ...):\\n``; the AST arm continues
the compact tree up to the body's ``<indent>`` (the codec writes the return annotation after the body, so that part
is the model's). The answer's names are mapped back to the prompt's before the problem's tests run in
:mod:`ml.sandbox`; the prompt's imports and helper functions come first in the program.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ml.codec.python_ast import encode
from ml.codec.tokens import tokens_to_text
from ml.dataset import clean_docstring
from ml.renaming.python_rename import alpha_rename, undo_renaming

# Codex (Chen et al. 2021) stop sequences: a text completion ends where the next top-level statement starts.
_STOP = re.compile(r"\n(?=\S)")


HUMANEVAL_LANGUAGE = "python"  # the benchmark's problems, prompts and tests are Python


@dataclass(frozen=True)
class HumanEvalTask:
    task_id: str
    docstring: str  # cleaned as the training docstrings were
    text_prefix: str  # renamed signature line(s), ending with ":\n"
    ast_prefix: str  # compact AST text of the renamed stub up to the body
    mapping: dict  # original name -> var_i of the stub (function and parameters)
    context: str  # the prompt without the entry function: imports, helpers
    test: str
    entry_point: str


def make_task(problem: Mapping, max_nl_chars: int = 600) -> HumanEvalTask:
    """The docstring, both arms' prefixes and the name mapping of one HumanEval problem."""
    prompt = problem["prompt"]
    module = ast.parse(prompt)
    func = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"])
    doc = clean_docstring(ast.get_docstring(func) or "", max_nl_chars)
    stub = ast.FunctionDef(name=func.name, args=func.args, body=[ast.Pass()], decorator_list=[],
                           returns=func.returns, type_comment=None, type_params=[])
    renamed = alpha_rename(ast.unparse(ast.fix_missing_locations(ast.Module(body=[stub], type_ignores=[]))))
    lines = renamed.code.rstrip("\n").split("\n")
    if lines[-1].strip() != "pass":
        raise ValueError(f"{problem['task_id']}: unexpected stub {renamed.code!r}")
    tokens = encode(renamed.code)
    cut = tokens.index("<Pass>")  # the body's first statement: what comes before it is the signature
    first = min([func.lineno] + [d.lineno for d in func.decorator_list]) - 1
    kept = prompt.split("\n")
    context = "\n".join(kept[:first] + kept[func.end_lineno:])
    return HumanEvalTask(problem["task_id"], doc, "\n".join(lines[:-1]) + "\n", tokens_to_text(tokens[:cut]),
                         renamed.mapping, context, problem["test"], problem["entry_point"])


def truncate_text_completion(completion: str) -> str:
    """A text arm's body up to the first line that starts at column 0 (the next top-level statement)."""
    match = _STOP.search(completion)
    return completion[:match.start() + 1] if match else completion


def program(task: HumanEvalTask, renamed_source: str | None) -> str | None:
    """The program the sandbox runs: the prompt's context, the answer with the prompt's names back, the problem's
    tests and the call to ``check``. None when the answer does not parse or has no function named ``var_0``."""
    if renamed_source is None:
        return None
    try:
        source = undo_renaming(renamed_source, task.mapping)
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return None
    if not any(isinstance(n, ast.FunctionDef) and n.name == task.entry_point for n in tree.body):
        return None
    return f"{task.context}\n\n{source}\n\n{task.test}\ncheck({task.entry_point})\n"

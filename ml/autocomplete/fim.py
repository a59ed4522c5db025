"""Fill-in-the-middle and comment-to-code rows (Bavarian et al. 2022, "Efficient Training of Language Models to
Fill in the Middle"), in the Qwen2.5-Coder token strings.

A FIM row cuts one piece of code into prefix / middle / suffix and asks for the middle:

- PSM: ``<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>`` → ``{middle}``
- SPM: ``<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}`` → ``{middle}`` (the paper's SPM variant
  whose prefix runs straight into the middle, so a server can extend a prefix token by token)

The middle is chosen by one of two span policies: ``char`` (two uniform character positions, the paper's
choice) or ``ast`` (one whole syntax node: a statement, an expression or a block, from the language's own
parser). A comment-to-code row is the unit's docstring or leading comment as a comment block (the prompt,
masked from the loss) and its code as the completion.
"""

from __future__ import annotations

import ast
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ml.splits import DEFAULT_DEV_FRACTION, DEFAULT_TEST_FRACTION, split_of

FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_TOKENS = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE)
LINE_COMMENT = {"python": "#", "javascript": "//", "java": "//"}


@dataclass(frozen=True)
class FimRates:
    """Shares of the data: ``fim_rate`` FIM rows (the rest comment-to-code where the unit has a comment), of the
    FIM rows ``spm_rate`` in SPM order, ``ast_span_rate`` with an AST-node middle and ``line_span_rate`` with whole
    lines (what an editor asks for most: the rest of a line, the next line)."""

    fim_rate: float = 0.8
    spm_rate: float = 0.5
    ast_span_rate: float = 0.3
    line_span_rate: float = 0.5  # of the FIM rows: one to three whole lines (the rest: two random characters)
    max_context_chars: int = 400  # prefix and suffix are cut to this many characters around the middle
    max_middle_chars: int = 240
    min_middle_chars: int = 1


def fim_prompt(prefix: str, suffix: str, order: str = "psm") -> str:
    """The prompt of a FIM row; the model's answer is the middle."""
    if order == "psm":
        return f"{FIM_PREFIX}{prefix}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}"
    if order == "spm":
        return f"{FIM_PREFIX}{FIM_SUFFIX}{suffix}{FIM_MIDDLE}{prefix}"
    raise ValueError(f"FIM order must be 'psm' or 'spm', not {order!r}")


def parse_fim_prompt(prompt: str) -> tuple[str, str, str]:
    """(prefix, suffix, order) of a prompt made by :func:`fim_prompt` (or by an editor with the same template)."""
    if not prompt.startswith(FIM_PREFIX) or prompt.count(FIM_SUFFIX) != 1 or prompt.count(FIM_MIDDLE) != 1:
        raise ValueError("not a FIM prompt: expected <|fim_prefix|>, one <|fim_suffix|> and one <|fim_middle|>")
    body = prompt[len(FIM_PREFIX):]
    if body.startswith(FIM_SUFFIX):
        suffix, prefix = body[len(FIM_SUFFIX):].split(FIM_MIDDLE)
        return prefix, suffix, "spm"
    prefix, rest = body.split(FIM_SUFFIX)
    suffix, tail = rest.split(FIM_MIDDLE)
    if tail:
        raise ValueError("a PSM prompt ends with <|fim_middle|>")
    return prefix, suffix, "psm"


def char_span(code: str, rng: random.Random, rates: FimRates = FimRates()) -> tuple[int, int]:
    """Two uniform character positions (the middle at most ``max_middle_chars``)."""
    n = len(code)
    start = rng.randrange(0, max(1, n - rates.min_middle_chars))
    longest = min(rates.max_middle_chars, n - start)
    return start, start + rng.randint(min(rates.min_middle_chars, longest), longest)


def _python_node_spans(code: str) -> list[tuple[int, int]]:
    tree = ast.parse(code)
    starts = [0]
    for line in code.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))

    def offset(line: int, col: int) -> int:  # ast columns are UTF-8 byte offsets
        text = code[starts[line - 1]:starts[line] if line < len(starts) else len(code)]
        return starts[line - 1] + len(text.encode()[:col].decode(errors="ignore"))

    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt | ast.expr) and getattr(node, "end_lineno", None):
            a, b = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
            if isinstance(node, ast.stmt):  # a whole statement takes its line's end with it
                b = code.find("\n", b) + 1 or len(code)
            spans.append((a, b))
    return spans


_TS_KINDS = ("statement", "expression", "declaration", "block", "call", "assignment", "arguments", "body")


def _treesitter_node_spans(code: str, language: str) -> list[tuple[int, int]]:
    from ml.codec.treesitter_codec import parse_unit_wrapped

    node, src, offset = parse_unit_wrapped(code, language)  # a Java method parses inside a class
    end = offset + len(code.encode())
    spans, stack = [], [node]
    while stack:
        n = stack.pop()
        stack.extend(n.children)
        if n.is_named and n is not node and any(k in n.type for k in _TS_KINDS) and n.start_byte >= offset \
                and n.end_byte <= end:
            spans.append((len(src[offset:n.start_byte].decode(errors="ignore")),
                          len(src[offset:n.end_byte].decode(errors="ignore"))))
    return spans


def node_spans(code: str, language: str) -> list[tuple[int, int]]:
    """Character spans of the statements, expressions and blocks of ``code`` (empty when it does not parse)."""
    try:
        return _python_node_spans(code) if language == "python" else _treesitter_node_spans(code, language)
    except (SyntaxError, ValueError):
        return []


def ast_span(code: str, language: str, rng: random.Random, rates: FimRates = FimRates()) -> tuple[int, int] | None:
    """One whole syntax node of ``code`` no longer than ``max_middle_chars``; None when there is none."""
    spans = [(a, b) for a, b in node_spans(code, language) if rates.min_middle_chars <= b - a <= rates.max_middle_chars]
    return rng.choice(sorted(set(spans))) if spans else None


def line_span(code: str, rng: random.Random) -> tuple[int, int] | None:
    """One whole non-blank line (with its newline): the single-line infilling the held-out sets measure."""
    starts, pos = [], 0
    for line in code.splitlines(keepends=True):
        if line.strip() and not line.lstrip().startswith(("#", "//")):
            starts.append((pos, pos + len(line)))
        pos += len(line)
    return rng.choice(starts) if starts else None


def cut(code: str, span: tuple[int, int], max_context_chars: int) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of ``code`` around ``span``, the context cut to ``max_context_chars`` each side at
    line boundaries (so a prefix starts at a line's start)."""
    a, b = span
    prefix, middle, suffix = code[:a], code[a:b], code[b:]
    if len(prefix) > max_context_chars:
        keep = prefix[-max_context_chars:]
        prefix = keep[keep.find("\n") + 1:] if "\n" in keep else keep
    if len(suffix) > max_context_chars:
        keep = suffix[:max_context_chars]
        suffix = keep[: keep.rfind("\n") + 1] if "\n" in keep else keep
    return prefix, middle, suffix


def comment_block(text: str, language: str) -> str:
    """``text`` as line comments of ``language`` (the comment-to-code prompt)."""
    mark = LINE_COMMENT.get(language, "#")
    return "".join(f"{mark} {line}".rstrip() + "\n" for line in text.strip().splitlines())


def lines_span(code: str, rng: random.Random, max_lines: int = 3) -> tuple[int, int] | None:
    """One to ``max_lines`` whole lines from a non-blank one, with their indentation and final newline."""
    first = line_span(code, rng)
    if first is None:
        return None
    end = first[1]
    for _ in range(rng.randint(1, max_lines) - 1):
        nxt = code.find("\n", end)
        end = len(code) if nxt < 0 else nxt + 1
    return first[0], end


def fim_row(code: str, language: str, rng: random.Random, rates: FimRates) -> dict | None:
    """One FIM row of ``code`` under ``rates`` (order and span policy drawn from ``rng``); None when no span
    fits."""
    order = "spm" if rng.random() < rates.spm_rate else "psm"
    draw = rng.random()
    policy = "ast" if draw < rates.ast_span_rate else "line" if draw < rates.ast_span_rate + rates.line_span_rate \
        else "char"
    span = ast_span(code, language, rng, rates) if policy == "ast" else lines_span(code, rng) \
        if policy == "line" else None
    if span is None or span[1] - span[0] > rates.max_middle_chars:
        policy, span = "char", char_span(code, rng, rates)
    prefix, middle, suffix = cut(code, span, rates.max_context_chars)
    if not middle:
        return None
    return {"kind": "fim", "order": order, "span": policy, "prefix": prefix, "middle": middle, "suffix": suffix,
            "prompt": fim_prompt(prefix, suffix, order), "completion": middle}


def comment_to_code_row(comment: str, code: str, language: str) -> dict:
    prompt = comment_block(comment, language)
    return {"kind": "comment_to_code", "order": None, "span": None, "prefix": prompt, "middle": code,
            "suffix": "", "prompt": prompt, "completion": code}


def group_key(unit: Mapping) -> str:
    """The key a unit's split is decided by: its own ``group_key`` where it has one (the domain's near-duplicate
    clusters), else its file's path, so every unit of a file lands in the same split."""
    return str(unit.get("group_key") or unit["path"])


def training_rows(units: Iterable[Mapping], language: str, rates: FimRates, *, seed: int,
                  nl_target=lambda code: code) -> Iterator[dict]:
    """Per code unit (``id path code docstring``): a comment-to-code row with probability 1 - ``fim_rate`` when it
    has a docstring/comment and :func:`nl_target` leaves code, else a FIM row (``split`` = train, ``group_key``)."""
    for unit in units:
        rng = random.Random(f"{seed}:{unit['id']}")
        code = unit["code"]
        target = nl_target(code) if unit.get("docstring") else None
        if target and rng.random() >= rates.fim_rate:
            row = comment_to_code_row(unit["docstring"], target, language)
        else:
            row = fim_row(code, language, rng, rates)
        if row is not None:
            yield {"id": unit["id"], "language": language, "path": unit["path"], "split": "train",
                   "group_key": group_key(unit), **row}


def single_line_tasks(units: Sequence[Mapping], language: str, *, seed: int, max_context_chars: int = 600,
                      limit: int = 0) -> list[dict]:
    """Single-line infilling tasks (PSM): one whole line of each unit masked, the held-out sets' format."""
    tasks = []
    for unit in units:
        rng = random.Random(f"line:{seed}:{unit['id']}")
        span = line_span(unit["code"], rng)
        if span is None:
            continue
        prefix, middle, suffix = cut(unit["code"], span, max_context_chars)
        tasks.append({"id": unit["id"], "language": language, "path": unit.get("path", ""), "prefix": prefix,
                      "middle": middle, "suffix": suffix})
        if limit and len(tasks) >= limit:
            break
    return tasks


def dataset_rows(units: Sequence[Mapping], language: str, rates: FimRates, *, seed: int,
                 dev_fraction: float = DEFAULT_DEV_FRACTION, test_fraction: float = DEFAULT_TEST_FRACTION,
                 nl_target=lambda code: code) -> list[dict]:
    """The rows of one slice (or the domain), each with its ``split`` (``ml.splits.split_of`` of the unit's
    :func:`group_key`: the file path, or the domain's near-duplicate cluster) and that ``group_key``: FIM /
    comment-to-code training rows of the ``train`` groups, and one single-line infilling task (``kind`` =
    ``infill_task``) per unit of the ``dev`` and ``test`` groups. No group is on two sides."""
    by_split: dict[str, list[Mapping]] = {"train": [], "dev": [], "test": []}
    for u in units:
        by_split[split_of(group_key(u), dev=dev_fraction, test=test_fraction)].append(u)
    rows = list(training_rows(by_split["train"], language, rates, seed=seed, nl_target=nl_target))
    for split in ("dev", "test"):
        keys = {u["id"]: group_key(u) for u in by_split[split]}
        for task in single_line_tasks(by_split[split], language, seed=seed, max_context_chars=rates.max_context_chars):
            rows.append({**task, "split": split, "group_key": keys[task["id"]], "kind": "infill_task", "order": "psm",
                         "span": "line", "prompt": fim_prompt(task["prefix"], task["suffix"]),
                         "completion": task["middle"]})
    return rows

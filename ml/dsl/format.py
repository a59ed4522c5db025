"""How the student sees a task: the prompt (schema + request) and the completion (one compact JSON AST).

Key order in a completion follows the schema's ``properties`` order (``filter, sort, limit``; ``op, field, value``;
``op, args``; ``op, arg``; ``field, order``), so constrained decoding and training targets agree byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

# Instruction shared by every prompt; short on purpose (the tiny demo student pays for every token).
INSTRUCTION = "Translate the request into one JSON object that validates against the schema."
_KEY_ORDER = ("filter", "sort", "limit", "op", "field", "value", "args", "arg", "order")


def _ordered(node: Any) -> Any:
    if isinstance(node, dict):
        rank = {k: i for i, k in enumerate(_KEY_ORDER)}
        keys = sorted(node, key=lambda k: (rank.get(k, len(rank)), k))
        return {k: _ordered(node[k]) for k in keys}
    if isinstance(node, list):
        return [_ordered(x) for x in node]
    return node


def ast_to_text(ast: Any) -> str:
    """Compact JSON (no spaces, UTF-8 kept) in schema key order: the completion the student learns."""
    return json.dumps(_ordered(ast), separators=(",", ":"), ensure_ascii=False)


def schema_to_text(schema: dict[str, Any]) -> str:
    """The schema as the student reads it: compact JSON with its identifying metadata left out."""
    shown = {k: v for k, v in schema.items() if k not in ("$schema", "$id")}
    return json.dumps(shown, separators=(",", ":"), ensure_ascii=False)


def prompt_text(schema: dict[str, Any], query: str) -> str:
    # Ends in a newline: byte-level BPE would glue a trailing space to the completion's first "{".
    return f"{INSTRUCTION}\nSchema: {schema_to_text(schema)}\nRequest: {query}\nJSON:\n"


def build_prompt(tokenizer, schema: dict[str, Any], query: str) -> str:
    """The prompt string for ``tokenizer``: wrapped in its chat template when it has one (instruct models such as
    ``unsloth/gemma-3-270m-it``), plain text otherwise (the ``tiny:`` students)."""
    return wrap_prompt(tokenizer, prompt_text(schema, query))


def wrap_prompt(tokenizer, text: str) -> str:
    """A plain prompt text (:func:`prompt_text`) in the tokenizer's chat template, if it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def completion_text(tokenizer, ast: Any) -> str:
    """The training completion: the AST text, then the end-of-turn / end-of-sequence token."""
    return ast_to_text(ast) + (tokenizer.eos_token or "")


def parse_completion(text: str) -> tuple[Any | None, str | None]:
    """(parsed JSON, None) or (None, why). Reads the first JSON value in ``text`` and ignores what follows it
    (a student may keep generating after a complete object)."""
    s = text.strip()
    if not s:
        return None, "empty output"
    start = s.find("{")
    if start < 0:
        return None, "no JSON object"
    try:
        value, _ = json.JSONDecoder().raw_decode(s[start:])
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg}"
    if not isinstance(value, dict):
        return None, "not a JSON object"
    return value, None

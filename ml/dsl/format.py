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


def _value_type(value: dict[str, Any]) -> str:
    if "enum" in value:
        return "|".join(str(v) for v in value["enum"])
    if "pattern" in value:
        return "date"
    return str(value.get("type", "any"))


def schema_digest(schema: dict[str, Any]) -> str:
    """The schema as a few lines a small student reads cheaply: per field its value type (or enum values) and
    comparison operators, then the logical operators, sort orders and limit. Read off the JSON Schema itself (the
    ``$defs.comparison`` branches the DSL template writes), so a held-out domain's schema reads the same way.

    The full JSON Schema is about 3x the tokens; on 2 CPU cores that is the difference between a student that
    learns in the demo budget and one that does not (README, "DSL student").
    """
    defs = schema.get("$defs", {})
    branches = defs.get("comparison", {}).get("anyOf")
    if not branches:
        raise ValueError("schema_view='digest' reads schemas built from the DSL template ($defs.comparison.anyOf); "
                         "this schema has none: use schema_view='json'")
    fields: dict[str, tuple[list[str], list[str]]] = {}
    for branch in branches:
        props = branch["properties"]
        ops = props["op"]["enum"] if "enum" in props["op"] else [props["op"]["const"]]
        types, field_ops = fields.setdefault(props["field"]["const"], ([], []))
        value = props.get("value", {})
        types.append(_value_type(value.get("items", {}) if value.get("type") == "array" else value))
        field_ops += ops
    logical = list(defs.get("logical", {}).get("properties", {}).get("op", {}).get("enum", []))
    if "not" in defs:
        logical.append("not")
    props = schema.get("properties", {})
    orders = props.get("sort", {}).get("items", {}).get("properties", {}).get("order", {}).get("enum", [])
    lines = [str(schema.get("title", "query"))]
    lines += [f"{name}: {types[0]}; {' '.join(ops)}" for name, (types, ops) in fields.items()]
    tail = [f"logic: {' '.join(logical)}"]
    if orders:
        tail.append(f"sort: {' '.join(orders)}")
    if "limit" in props:
        tail.append(f"limit: {props['limit'].get('type', 'integer')}")
    return "\n".join(lines + ["; ".join(tail)])


SCHEMA_VIEWS = {"json": schema_to_text, "digest": schema_digest}


def prompt_text(schema: dict[str, Any], query: str, schema_view: str = "json") -> str:
    """``schema_view``: ``json`` shows the whole JSON Schema (the original pipeline), ``digest`` the
    :func:`schema_digest` of it."""
    if schema_view not in SCHEMA_VIEWS:
        raise ValueError(f"schema_view must be one of {sorted(SCHEMA_VIEWS)}, not {schema_view!r}")
    # Ends in a newline: byte-level BPE would glue a trailing space to the completion's first "{".
    return f"{INSTRUCTION}\nSchema: {SCHEMA_VIEWS[schema_view](schema)}\nRequest: {query}\nJSON:\n"


def build_prompt(tokenizer, schema: dict[str, Any], query: str, schema_view: str = "json") -> str:
    """The prompt string for ``tokenizer``: wrapped in its chat template when it has one (instruct models such as
    ``unsloth/gemma-3-270m-it``), plain text otherwise (the ``tiny:`` students)."""
    return wrap_prompt(tokenizer, prompt_text(schema, query, schema_view))


def wrap_prompt(tokenizer, text: str) -> str:
    """A plain prompt text (:func:`prompt_text`) in the tokenizer's chat template, if it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def completion_text(tokenizer, ast: Any) -> str:
    """The training completion: the AST text (``ast`` as a JSON value, or already as its compact text), then the
    end-of-turn / end-of-sequence token."""
    return (ast if isinstance(ast, str) else ast_to_text(ast)) + (tokenizer.eos_token or "")


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

"""JSON Schema → llguidance grammar and matchers, cached per schema and per HF tokenizer.

What llguidance needed (checked against llguidance 1.9.1, see ``tests/test_dsl_constrained.py``):

* no rewrite of the ``comparison`` def: llguidance intersects the sibling ``anyOf`` branches with the base
  ``properties`` (``value: {}``) and ``additionalProperties: false`` itself. A random walk over its token masks only
  ever produces documents that validate against the original schema, and the masks are identical to those of the
  hand-rewritten form (``anyOf`` of complete ``{op, field, value}`` objects).
* llguidance emits object properties in ``properties`` order (and rejects any other order), so
  :func:`decoding_schema` reorders every ``properties`` map to the training key order of ``ml.dsl.format``
  (``filter, sort, limit``; ``op, field, value``; ``op, args``; ``op, arg``; ``field, order``).
* ``x-guidance`` forces compact separators and no free whitespace, so that constrained output is byte-identical to
  ``ast_to_text`` (the default would allow whitespace between tokens).
"""

from __future__ import annotations

import copy
import json
import weakref
from typing import Any

from ml.dsl.closing import Closer
from ml.dsl.format import _KEY_ORDER

# Compact JSON, exactly as ``ast_to_text`` writes it: no whitespace anywhere, "," between items, ":" after keys.
X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
_RANK = {k: i for i, k in enumerate(_KEY_ORDER)}


# ---------------------------------------------------------------------------------------------------- schema


def _reorder_properties(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _reorder_properties(v) for k, v in node.items()}
        props = out.get("properties")
        if isinstance(props, dict) and all(isinstance(v, (dict, bool)) for v in props.values()):
            keys = sorted(props, key=lambda k: (_RANK.get(k, len(_RANK)), list(props).index(k)))
            out["properties"] = {k: props[k] for k in keys}
        return out
    if isinstance(node, list):
        return [_reorder_properties(x) for x in node]
    return node


def decoding_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema handed to llguidance: ``schema`` with every ``properties`` map in training key order and
    ``x-guidance`` set to compact, whitespace-free JSON. Accepts the same documents as ``schema``."""
    out = _reorder_properties(copy.deepcopy(schema))
    out["x-guidance"] = dict(X_GUIDANCE)
    return out


def _schema_key(schema: dict[str, Any] | str) -> str:
    return "lark:" + schema if isinstance(schema, str) else json.dumps(schema, sort_keys=True, ensure_ascii=False)


_GRAMMARS: dict[str, str] = {}


def grammar_for(schema: dict[str, Any] | str) -> str:
    """llguidance grammar of ``decoding_schema(schema)``, or of an llguidance Lark grammar given as a string (e.g.
    the srl step: tags around two JSON schemas), cached by content. Raises ``ValueError`` when llguidance rejects
    it."""
    import llguidance

    key = _schema_key(schema)
    if key not in _GRAMMARS:
        if isinstance(schema, str):
            grammar = llguidance.grammar_from("lark", schema)
        else:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(decoding_schema(schema))
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
        if is_error:
            raise ValueError(f"llguidance rejects the schema: {messages[0] if messages else '?'}")
        _GRAMMARS[key] = grammar
    return _GRAMMARS[key]


# ---------------------------------------------------------------------------------------------------- tokenizer


class _TokenizerState:
    """What llguidance keeps per HF tokenizer: its ``LLTokenizer``, the :class:`Closer` and one template matcher
    per schema (a fresh matcher costs milliseconds, a ``deep_copy`` of the template microseconds)."""

    max_templates = 256

    def __init__(self, size: int, lltok) -> None:
        self.size = size
        self.lltok = lltok
        self.closer: Closer | None = None
        self.templates: dict[str, Any] = {}


_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(tokenizer) -> _TokenizerState:
    import llguidance.hf

    hit = _STATES.get(tokenizer)
    if hit is None or hit.size != len(tokenizer):  # first use, or tokens were added since
        hit = _STATES[tokenizer] = _TokenizerState(len(tokenizer), llguidance.hf.from_tokenizer(tokenizer))
    return hit


def ll_tokenizer(tokenizer):
    """The ``llguidance.LLTokenizer`` of a HF fast tokenizer, built once per tokenizer object (rebuilt if tokens
    were added since)."""
    return _state(tokenizer).lltok


def closer(tokenizer) -> Closer:
    """The :class:`Closer` of a HF tokenizer (cached like :func:`ll_tokenizer`)."""
    st = _state(tokenizer)
    if st.closer is None:
        st.closer = Closer(st.lltok)
    return st.closer


def matcher(tokenizer, schema: dict[str, Any]):
    """A fresh ``LLMatcher`` for ``schema`` over ``tokenizer`` (a copy of a cached template; warnings not logged).
    Raises ``ValueError`` when llguidance rejects the schema."""
    import llguidance

    st = _state(tokenizer)
    key = _schema_key(schema)
    template = st.templates.get(key)
    if template is None:
        template = llguidance.LLMatcher(st.lltok, grammar_for(schema), log_level=0)
        if template.is_error():
            raise ValueError(f"llguidance rejects the schema: {template.get_error()}")
        if len(st.templates) >= st.max_templates:
            st.templates.pop(next(iter(st.templates)))
        st.templates[key] = template
    return template.deep_copy()


_EXECUTOR = None


def executor():
    """The process's one ``llguidance.LLExecutor`` (the thread pool that fills a batch's masks in parallel)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        import llguidance

        _EXECUTOR = llguidance.LLExecutor()
    return _EXECUTOR

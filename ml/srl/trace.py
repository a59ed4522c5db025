"""How a rewrite step reads: the prompt the student sees and the three tagged parts it writes.

A step is ``<think>…</think><action>{json}</action><state_update>{json}</state_update>``, in that order, nothing
but whitespace around or between the parts. The action is an ast-grep rule and its fix
(``{"rule": {"pattern": "$A == None"}, "fix": "$A is None"}``, optionally ``"constraints"`` on metavariables); the
state update carries what the next step needs (``constraints``, ``decisions``, ``open_issues``, ``next_focus``).
:func:`parse_step` is strict: a missing, repeated or misordered tag, text outside the tags, or JSON that does not
validate against its schema is an error (the reward gives such a step exactly its malformed penalty).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import jsonschema

TAGS = ("think", "action", "state_update")
SPECIAL_TOKENS = tuple(t for name in TAGS for t in (f"<{name}>", f"</{name}>"))

ACTION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "rule": {
            "type": "object",
            "properties": {"pattern": {"type": "string", "minLength": 1}, "kind": {"type": "string"}},
            "required": ["pattern"],
        },
        "fix": {"type": "string"},
        # after "fix", as RewriteFamily.action writes it: constrained decoding emits keys in this order
        "constraints": {"type": "object", "additionalProperties": {"type": "object"}},
    },
    "required": ["rule", "fix"],
    "additionalProperties": False,
}
STATE_LIST_FIELDS = ("constraints", "decisions", "open_issues")
STATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **{name: {"type": "array", "items": {"type": "string"}} for name in STATE_LIST_FIELDS},
        "next_focus": {"type": "string"},
    },
    "required": [*STATE_LIST_FIELDS, "next_focus"],
    "additionalProperties": False,
}
INITIAL_STATE: dict[str, Any] = {"constraints": [], "decisions": [], "open_issues": [], "next_focus": "read the code"}

# Short on purpose: every prompt token is paid for at each training step and each GRPO sample on a CPU.
SYSTEM = (
    'Rewrite code with ast-grep. Answer <think>why</think><action>{"rule":{"pattern":...},"fix":...}</action>'
    "<state_update>{constraints, decisions, open_issues, next_focus}</state_update>."
)

_STEP = re.compile(
    r"\s*<think>(?P<think>.*?)</think>\s*<action>(?P<action>.*?)</action>\s*"
    r"<state_update>(?P<state>.*?)</state_update>\s*",
    re.DOTALL,
)


@dataclass(frozen=True)
class Step:
    think: str
    action: dict[str, Any]
    state: dict[str, Any]


@dataclass
class Parsed:
    """A parsed step, or why it is malformed (``error`` set, ``step`` None)."""

    step: Step | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.step is not None


# compact JSON, exactly as render_step writes it
_X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}


def step_grammar(max_think_chars: int = 400) -> str:
    """The step as an llguidance Lark grammar: the six tags (atomic tokens, so written as ``<think>``, not quoted),
    a think without ``<``, and the two JSON schemas. Constrained decoding with it makes every step parse."""
    action = json.dumps({**ACTION_SCHEMA, "x-guidance": _X_GUIDANCE})
    state = json.dumps({**STATE_SCHEMA, "x-guidance": _X_GUIDANCE})
    return (f"start: <think> THINK </think> <action> action </action> <state_update> state </state_update>\n"
            f"THINK: /[^<]{{1,{max_think_chars}}}/\naction: %json {action}\nstate: %json {state}\n")


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def render_step(think: str, action: dict[str, Any], state: dict[str, Any]) -> str:
    """The text of a step, exactly as the student learns to write it (compact JSON, no whitespace between tags)."""
    return (f"<think>{think.strip()}</think><action>{compact(action)}</action>"
            f"<state_update>{compact(state)}</state_update>")


def _errors(value: Any, schema: dict[str, Any]) -> str | None:
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(value))
    return None if error is None else f"{'/'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"


def parse_step(text: str) -> Parsed:
    """The step in ``text``, or the first reason it is malformed."""
    for tag in SPECIAL_TOKENS:
        if text.count(tag) != 1:
            return Parsed(error=f"{tag} appears {text.count(tag)} times")
    match = _STEP.fullmatch(text)
    if match is None:
        return Parsed(error="tags out of order or text outside them")
    think = match["think"].strip()
    if not think:
        return Parsed(error="empty think")
    parts: dict[str, Any] = {}
    for name, schema in (("action", ACTION_SCHEMA), ("state", STATE_SCHEMA)):
        try:
            parts[name] = json.loads(match[name])
        except json.JSONDecodeError as exc:
            return Parsed(error=f"{name} is not JSON ({exc.msg})")
        problem = _errors(parts[name], schema)
        if problem:
            return Parsed(error=f"{name} does not match its schema: {problem}")
    return Parsed(step=Step(think=think, action=parts["action"], state=parts["state"]))


def user_prompt(language: str, instruction: str, code: str, state: dict[str, Any] | None = None) -> str:
    """What the student is asked: the slice, the instruction in plain English, the code and the previous state."""
    return (f"Language: {language}\nInstruction: {instruction}\nCode:\n{code.rstrip()}\n"
            f"State: {compact(state or INITIAL_STATE)}")


def chat_prompt(tokenizer, language: str, instruction: str, code: str, state: dict[str, Any] | None = None) -> str:
    """The user prompt in the tokenizer's chat template (ChatML for SmolLM2) with the generation prompt; a plain
    ``SYSTEM + user`` text for a tokenizer without a template (``tiny:`` bases)."""
    user = user_prompt(language, instruction, code, state)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"{SYSTEM}\n{user}\nStep:\n"

"""What one completion request is, whichever backend serves it: the prompt the model continues (fill-in-the-middle or
chat), its sampling settings, the events it receives and the queued job that carries them.

The HTTP server is :mod:`ml.serving.completions`; the Hugging Face backend is :mod:`ml.serving.completion_backend`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ml.autocomplete.fim import FIM_PREFIX, fim_prompt

DEFAULT_MAX_TOKENS = 64  # /v1/completions: an editor wants a line or a few, fast
# Below this a temperature is greedy (sampling at 1e-6 is argmax with extra steps).
_GREEDY_BELOW = 1e-5


# ---------------------------------------------------------------------------------------------------- prompts


# Characters of prompt (and of suffix) a request keeps before tokenizing: far more than any context holds (a
# token is rarely over 8 characters), so only the cost of tokenizing a huge prompt is cut, never what the model sees.
MAX_PROMPT_CHARS = 64 * 1024


def clip_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The end of a too-long ``prompt`` (the code next to the cursor, as editors truncate), keeping a leading FIM
    marker of an editor-rendered template so that the prompt stays a FIM prompt."""
    if len(prompt) <= max_chars:
        return prompt
    head = FIM_PREFIX if prompt.startswith(FIM_PREFIX) else ""
    return head + prompt[len(prompt) - (max_chars - len(head)):]


def build_completion_prompt(prompt: str, suffix: str | None) -> str:
    """The text the model continues: ``prompt`` as is when there is no suffix or when it is already a FIM prompt
    (an editor rendered its own template), else the PSM fill-in-the-middle prompt of ``prompt`` and ``suffix``.
    A huge prompt keeps its end and a huge suffix its start (:func:`clip_prompt`)."""
    prompt = clip_prompt(prompt)
    if suffix is None or FIM_PREFIX in prompt:
        return prompt
    return fim_prompt(prompt, suffix[:MAX_PROMPT_CHARS])


def _content_text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


@dataclass(frozen=True)
class PlainChat:
    """A chat's messages with their contents as plain text, and the prompt without a chat template."""

    messages: list[dict[str, str]]

    @property
    def text(self) -> str:
        # a base code model reads a comment and writes the code
        return "\n\n".join(m["content"] for m in self.messages) + "\n"


def plain_chat_prompt(messages: Sequence[dict[str, Any]]) -> PlainChat:
    return PlainChat([{"role": m["role"], "content": _content_text(m.get("content"))} for m in messages])


def chat_prompt(tokenizer, messages: Sequence[dict[str, Any]]) -> str:
    """The prompt of a chat: the tokenizer's chat template (with the assistant turn opened) when it has one, else
    the message contents joined by blank lines."""
    plain = plain_chat_prompt(messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(plain.messages, tokenize=False, add_generation_prompt=True)
    return plain.text


# ---------------------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class SamplingParams:
    """How one request decodes. ``temperature`` 0 is greedy; ``stop`` strings end the text (not included)."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_BELOW

    def batch_key(self) -> tuple | None:
        """Requests with equal keys decode in one batch (``model.generate`` takes one sampling setting); a seeded
        request decodes alone so that its seed means the same thing whatever else is queued."""
        if self.seed is not None:
            return None
        return ("greedy",) if self.greedy else ("sample", self.temperature, self.top_p)


@dataclass
class Event:
    """What a request receives from the worker: text deltas, then one event with ``finish_reason`` (``stop`` or
    ``length``) and ``usage``, or one event with ``error``."""

    text: str = ""
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None

    @property
    def last(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass(eq=False)
class Job:
    """One queued request: the prompt, its sampling settings and the callback that receives its events (on the
    worker thread; a callback that raises cancels the job). The worker fills ``ids`` (the prompt's tokens)."""

    prompt: str
    params: SamplingParams
    sink: Callable[[Event], None]
    ids: list[int] = field(default_factory=list)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def deliver(self, event: Event) -> None:
        if self.cancelled.is_set():
            return
        try:
            self.sink(event)
        except Exception:  # the receiver is gone (its event loop closed): stop spending tokens on it
            self.cancel()
        if event.last:
            self.done.set()

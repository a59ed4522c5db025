"""Serving: the completion server an editor talks to (:mod:`ml.serving.completions`, OpenAI completions + chat
over a Hugging Face causal LM) and a chat server (OpenAI + Ollama protocols) in front of the programmatic teacher or
a HF causal LM (:mod:`ml.serving.chat_server`). Both are FastAPI apps served by uvicorn.

Names are loaded lazily so that ``python -m ml.serving.chat_server`` (or ``.completions``) does not import the
module twice."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BackendError": "ml.serving.chat_server",
    "HFChatBackend": "ml.serving.chat_server",
    "ProgrammaticChatBackend": "ml.serving.chat_server",
    "ServerHandle": "ml.serving.chat_server",
    "create_chat_app": "ml.serving.chat_server",
    "serve": "ml.serving.chat_server",
    "HFCompletionBackend": "ml.serving.completions",
    "SamplingParams": "ml.serving.completions",
    "create_app": "ml.serving.completions",
    "ensure_fim_tokens": "ml.serving.completions",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ml.serving' has no attribute {name!r}")

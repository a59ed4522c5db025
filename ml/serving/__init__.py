"""Serving: a chat server (OpenAI + Ollama protocols) in front of the programmatic teacher or a HF causal LM.

Names are loaded lazily so that ``python -m ml.serving.chat_server`` does not import the module twice."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "BackendError",
    "ChatServer",
    "FaultInjectingBackend",
    "HFChatBackend",
    "ProgrammaticChatBackend",
    "ServerHandle",
    "serve",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("ml.serving.chat_server"), name)
    raise AttributeError(f"module 'ml.serving' has no attribute {name!r}")

"""A chat backend that misbehaves on a schedule, for the teacher tests (served by ml.serving.chat_server)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ml.serving.chat_server import BackendError, ChatBackend, Messages

FAULTS = ("ok", "garbage", "invalid", "timeout", "error500", "error503", "error400")


class FaultInjectingBackend:
    """Wraps a backend and misbehaves on a schedule: call ``i`` applies ``faults[i]`` (then ``ok`` forever).

    ``garbage``: text that holds no JSON object; ``invalid``: a JSON object no query schema accepts; ``timeout``:
    sleeps ``sleep_s`` before answering (a client with a shorter timeout gives up); ``error<status>``: answers that
    HTTP status; ``ok``: the wrapped backend's answer."""

    def __init__(self, inner: ChatBackend, faults: Sequence[str], sleep_s: float = 2.0) -> None:
        for f in faults:
            if f not in FAULTS and not (f.startswith("error") and f[5:].isdigit()):
                raise ValueError(f"unknown fault {f!r}; expected one of {FAULTS}")
        self.inner = inner
        self.faults = list(faults)
        self.sleep_s = sleep_s
        self.calls = 0
        self.model_name = getattr(inner, "model_name", "faulty")
        self._lock = threading.Lock()

    @classmethod
    def first(cls, inner: ChatBackend, fault: str, k: int, sleep_s: float = 2.0) -> FaultInjectingBackend:
        """``fault`` for the first ``k`` calls, then the wrapped backend."""
        return cls(inner, [fault] * k, sleep_s)

    def __call__(self, messages: Messages) -> str:
        with self._lock:
            fault = self.faults[self.calls] if self.calls < len(self.faults) else "ok"
            self.calls += 1
        if fault == "garbage":
            return "Sure! Here is what I think: the answer is probably fine {not json"
        if fault == "invalid":
            return '{"answer": "no idea"}'
        if fault.startswith("error"):
            raise BackendError(int(fault[5:]), f"injected fault: HTTP {fault[5:]}")
        if fault == "timeout":
            time.sleep(self.sleep_s)
        return self.inner(messages)

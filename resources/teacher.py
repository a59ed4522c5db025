"""The DSL teacher: programmatic (default, deterministic) or an LLM behind Ollama / an OpenAI-compatible server."""

import os

import dagster as dg

from ml.dsl.teachers import BACKENDS, DEFAULT_BASE_URLS, Teacher, make_teacher, resolve_model_id


class TeacherResource(dg.ConfigurableResource):
    """``backend``: ``programmatic`` | ``ollama`` | ``openai`` (any OpenAI-compatible ``/v1/chat/completions``:
    vLLM, llama.cpp server, ``python -m ml.serving.chat_server``). ``model`` empty → env ``LLM_MODEL``, then a
    ``.llmrc`` file, then ``gpt-oss:120b``. ``base_url`` empty → ``http://127.0.0.1:11434`` (ollama) or
    ``http://127.0.0.1:8000`` (openai). The API key, if any, is read from the env variable named ``api_key_env``."""

    backend: str = "programmatic"
    model: str = ""
    base_url: str = ""
    timeout_s: float = 60.0
    max_retries: int = 2
    api_key_env: str = "OPENAI_API_KEY"

    def _backend(self) -> str:
        backend = self.backend.strip().lower()
        if backend not in BACKENDS:
            raise dg.Failure(
                f"teacher resource: unknown backend {self.backend!r}; expected one of {', '.join(BACKENDS)}"
            )
        return backend

    def srl_teacher(self, exemplar_tasks=()):
        """The `srl` group's teacher on the same backend: programmatic, or the LLM at temperature 0.3 shown
        worked steps of ``exemplar_tasks`` (train families other than the task's)."""
        from ml.srl.teacher import make_srl_teacher

        backend = self._backend()
        if backend == "programmatic":
            return make_srl_teacher(backend)
        return make_srl_teacher(
            backend, base_url=self.base_url or DEFAULT_BASE_URLS[backend], model=resolve_model_id(self.model or None),
            exemplar_tasks=list(exemplar_tasks), timeout_s=self.timeout_s, max_retries=self.max_retries,
            api_key=(os.environ.get(self.api_key_env) or None) if self.api_key_env else None,
        )

    def teacher(self) -> Teacher:
        backend = self._backend()
        if backend == "programmatic":
            return make_teacher(backend)
        try:
            return make_teacher(
                backend,
                base_url=self.base_url or DEFAULT_BASE_URLS[backend],
                model=resolve_model_id(self.model or None),
                timeout_s=self.timeout_s,
                max_retries=self.max_retries,
                api_key=(os.environ.get(self.api_key_env) or None) if self.api_key_env else None,
            )
        except ValueError as exc:
            raise dg.Failure(f"teacher resource: {exc}") from exc

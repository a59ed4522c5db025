"""The completion server's llama.cpp engine: a GGUF file (an astforge export, see :mod:`ml.models.gguf_export`, or
any other) run by llama.cpp through ``llama-cpp-python``, behind the same worker thread, queue, stop handling and
streaming as the Hugging Face engine (:class:`ml.serving.completion_backend.QueuedCompletionBackend`), so both
serve the same routes with the same answers' shape.

One request decodes at a time (llama.cpp's context holds one sequence here); a request whose prompt starts like the
previous one reuses the KV cache of the shared prefix, which is what an editor sends as the user types.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.serving.completion_backend import MAX_TOKENS_CAP, STOP_TOKENS, QueuedCompletionBackend
from ml.serving.completion_jobs import Job, plain_chat_prompt

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 2048


def _load_llama(gguf_path: Path, n_ctx: int, n_threads: int, n_gpu_layers: int):
    try:
        from llama_cpp import Llama
    except ImportError as exc:  # the package is a compiled extra: say how to get it
        raise RuntimeError("the llama.cpp backend needs llama-cpp-python: `make install` builds it "
                           "(see the README, 'Serving with llama.cpp')") from exc
    try:
        # the prompt pass gets the same threads as decoding (its default is every core)
        return Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                     n_gpu_layers=n_gpu_layers, verbose=False)
    except ValueError as exc:  # llama-cpp-python's word for a file llama.cpp could not load
        raise ValueError(f"llama.cpp could not load {gguf_path}: not a GGUF model it supports ({exc})") from exc


class LlamaCppCompletionBackend(QueuedCompletionBackend):
    """A GGUF model run by llama.cpp. ``gguf_path``: the model file. ``n_ctx``: the context window, at most the
    model's training context (2048 keeps the KV cache small). ``n_threads``: CPU threads (default: all cores).
    ``n_gpu_layers``: layers offloaded to a GPU when llama.cpp was built with one (-1 = all; a CPU-only build runs
    them on the CPU). The prompt is
    tokenized with the GGUF's own tokenizer, control tokens (``<|fim_prefix|>``...) parsed as tokens, as the
    Hugging Face tokenizer does with its added tokens."""

    def __init__(self, gguf_path: str | Path, *, n_ctx: int = DEFAULT_CONTEXT, n_threads: int | None = None,
                 n_gpu_layers: int = 0, model_name: str | None = None,
                 max_tokens_cap: int = MAX_TOKENS_CAP) -> None:
        gguf_path = Path(gguf_path)
        if not gguf_path.is_file():
            raise ValueError(f"GGUF file {gguf_path} does not exist")
        self.path = gguf_path
        self.llm = _load_llama(gguf_path, n_ctx, n_threads or os.cpu_count() or 1, n_gpu_layers)
        import llama_cpp

        offloads = bool(n_gpu_layers) and llama_cpp.llama_supports_gpu_offload()
        self.device = "gpu" if offloads else "cpu"
        self.chat_template = self.llm.metadata.get("tokenizer.chat_template")
        self._pieces: dict[int, bytes] = {}
        context = min(n_ctx, self.llm.n_ctx(), llama_cpp.llama_model_n_ctx_train(self.llm.model))
        bos = self.llm.token_bos()
        eos = self.llm.token_eos()
        super().__init__(model_name=model_name, max_batch=1, max_tokens_cap=max_tokens_cap, context_length=context,
                         stop_ids=self._stop_ids(), bos_id=bos if bos >= 0 else None, pad_id=max(eos, 0))

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> str:
        plain = plain_chat_prompt(messages)
        if not self.chat_template:
            return plain.text
        # the template the GGUF carries (the HF tokenizer's, copied by the converter), rendered as transformers does
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        vocab_text = self._token_text
        return env.from_string(self.chat_template).render(
            messages=plain.messages, add_generation_prompt=True,
            bos_token=vocab_text(self.llm.token_bos()), eos_token=vocab_text(self.llm.token_eos()))

    def close(self) -> None:
        super().close()  # the running generation sees _closed and stops at its next token
        if self._worker.is_alive():  # never free the model under a generation that is still running
            log.warning("llama.cpp worker still busy after close(): the model is left to the process exit")
            return
        self.llm.close()

    # ----------------------------------------------------------------------------------------- engine

    def _token_text(self, token: int) -> str:
        return self._piece(token).decode("utf-8", errors="replace") if token >= 0 else ""

    def _piece(self, token: int) -> bytes:
        # llama-cpp-python's detokenize copies each piece through a 32-byte buffer and drops longer ones (SmolLM2
        # has 47: newlines followed by 32-80 spaces, long runs of "-" or "#"): ask again with the size it needs.
        piece = self._pieces.get(token)
        if piece is None:
            import ctypes

            import llama_cpp

            vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
            size = 64
            while True:
                buffer = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buffer, size, 0, True)
                if n >= 0:
                    break
                size = -n
            piece = self._pieces[token] = buffer.raw[:n]
        return piece

    def _stop_ids(self) -> frozenset[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        # end-of-generation tokens and every control token (chat markers, <|endoftext|>, the FIM tokens the
        # converter marks as control), as the HF engine stops at every special token
        ids = {i for i in range(self.llm.n_vocab())
               if llama_cpp.llama_vocab_is_eog(vocab, i) or llama_cpp.llama_vocab_is_control(vocab, i)}
        for text in STOP_TOKENS:
            pieces = self.llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(pieces) == 1:
                ids.add(pieces[0])
        return frozenset(ids)

    def _tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) if text else []

    def _decode(self, ids: list[int]) -> str:
        return b"".join(self._piece(i) for i in ids).decode("utf-8", errors="replace")

    def _generate(self, jobs: list[Job]) -> None:
        (row,) = self._rows(jobs)  # max_batch is 1
        params = row.job.params
        if params.greedy:
            sampling = {"temp": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0}
        else:
            # OpenAI's settings and nothing else: no top-k or min-p cut (llama.cpp's defaults are 40 and 0.05)
            sampling = {"temp": params.temperature, "top_k": 0, "top_p": params.top_p, "min_p": 0.0}
            # every sampled request sets the seed: an earlier request's must not make this one repeat it
            self.llm.set_seed(params.seed if params.seed is not None else secrets.randbits(31))
        for token in self.llm.generate(row.job.ids, repeat_penalty=1.0, **sampling):
            row.push(int(token))
            if row.finished or self._closed:
                break
        self._finish([row])

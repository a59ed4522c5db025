"""Completion server benchmark: the plain path (one request at a time) vs batching, through real HTTP.

    python bench/serve.py [--model-dir DIR [--adapter-dir DIR] | --model m0|m1|m2 | --tiny]
                          [--clients 4] [--requests 6] [--max-batch N] [--device auto]

The server is ml/serving/completions.py on a real uvicorn server on a free port of 127.0.0.1, started twice
over the same model: with ``max_batch=1`` (the baseline) and with ``max_batch=N`` (default: ``--clients``).
Each time ``--clients`` httpx clients send ``--requests`` requests each, one after the other, all at once: the
same single-line fill-in-the-middle completions (``prompt`` = the lines above a line of a stdlib module and its
indentation, ``suffix`` = the lines below, ``max_tokens`` 24, ``temperature`` 0, ``stop: ["\\n"]``), so it runs
offline and deterministically. One request per server before the clock starts warms it up.

The model: ``--model-dir`` (and ``--adapter-dir``), else the catalog's ($ASTFORGE_HOME/catalog.duckdb) latest
``autocomplete_stage_b_adapter`` on ``autocomplete_base_model`` (``--model`` picks m0 / m1 / m2 as
``astforge-serve`` does); ``--tiny`` builds a tiny random Qwen2 with a FIM tokenizer, seconds anywhere.

``latency_ms`` is one request seen by its client (queueing included); ``completions_per_s`` and
``decode_tokens_per_s`` (``usage.completion_tokens``) are over the wall time of all the clients. ``same_text``
is the fraction of requests answered with the same text by both servers (left-padded batches can change a
greedy pick by a rounding). ``errors`` counts failed requests of both runs and must be 0 (exit status 1).
Last line: {"plain_latency_ms_p50", "plain_latency_ms_p95", "batched_latency_ms_p50", "batched_latency_ms_p95",
"plain_completions_per_s", "batched_completions_per_s", "speedup", "errors", "clients", "requests", ...}.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import argparse
import importlib
import os
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import emit, peak_rss_mb

MAX_TOKENS = 24
SOURCE_MODULES = ("textwrap", "argparse", "difflib", "json.decoder")
PREFIX_LINES = 24
SUFFIX_LINES = 8


def fim_cases(n: int, modules: tuple[str, ...] = SOURCE_MODULES) -> list[dict]:
    """``n`` single-line FIM requests cut from stdlib modules: the cursor after the indentation of a code line,
    the lines above as ``prompt`` and the lines below as ``suffix``. Evenly spread over the modules' lines."""
    spots: list[tuple[list[str], int]] = []
    for name in modules:
        lines = Path(importlib.import_module(name).__file__).read_text().splitlines()
        for i in range(PREFIX_LINES, len(lines) - SUFFIX_LINES):
            code = lines[i].strip()
            # A line worth completing: some code, not a comment, a docstring line or a lone bracket.
            if len(code) >= 12 and not code.startswith(("#", '"', "'")) and any(c.isalpha() for c in code):
                spots.append((lines, i))
    if len(spots) < n:
        raise ValueError(f"only {len(spots)} completable lines in {', '.join(modules)}, {n} wanted")
    step = len(spots) / n
    cases = []
    for k in range(n):
        lines, i = spots[int(k * step)]
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        cases.append({
            "prompt": "\n".join(lines[i - PREFIX_LINES:i]) + "\n" + indent,
            "suffix": "\n" + "\n".join(lines[i + 1:i + 1 + SUFFIX_LINES]) + "\n",
            "max_tokens": MAX_TOKENS, "temperature": 0, "stop": ["\n"],
        })
    return cases


def tiny_model_dir(folder: Path) -> Path:
    """A tiny random Qwen2 (seed 0) with the autocomplete pipeline's FIM tokenizer, trained on the same modules."""
    from ml.autocomplete.recipe import fim_tokenizer
    from ml.training.base_model import save_base_model, tiny_model

    texts = [Path(importlib.import_module(m).__file__).read_text() for m in SOURCE_MODULES]
    tok = fim_tokenizer("tiny:qwen2", texts, vocab_size=1000)
    # the wider init of tests/test_completion_server.py: at 0.02 every completion is one stop token long
    return save_base_model(tiny_model("qwen2", tok, seed=0, initializer_range=0.2), tok, folder)


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    errors: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    wall_s: float = 0.0

    def summary(self, name: str) -> dict:
        done = len(self.latencies_ms)
        lat = sorted(self.latencies_ms)

        def pct(q: float) -> float | None:
            # nearest rank: with 16 requests p95 is the slowest one but one, not an interpolation past it
            return round(lat[min(done - 1, max(0, round(q * done) - 1))], 1) if done else None

        return {
            f"{name}_latency_ms_p50": round(statistics.median(lat), 1) if done else None,
            f"{name}_latency_ms_p95": pct(0.95),
            f"{name}_completions_per_s": round(done / self.wall_s, 3),
            f"{name}_decode_tokens_per_s": round(self.completion_tokens / self.wall_s, 2),
            f"{name}_completion_tokens": self.completion_tokens,
            f"{name}_wall_s": round(self.wall_s, 2),
            f"{name}_errors": self.errors,
        }


def load(base: str, cases: list[dict], clients: int, timeout_s: float) -> Run:
    """``clients`` clients, each sending its share of ``cases`` one after the other, all starting together."""
    import httpx

    run, lock = Run(), threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=timeout_s) as http:
            start.wait()
            for i in range(c, len(cases), clients):
                t0 = time.perf_counter()
                try:
                    r = http.post("/v1/completions", json=cases[i])
                    if r.status_code != 200:
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                    body = r.json()
                    text, tokens = body["choices"][0]["text"], int(body["usage"]["completion_tokens"])
                except Exception as exc:  # a failed request is counted, never retried
                    print(f"request {i} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    with lock:
                        run.errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000
                with lock:
                    run.latencies_ms.append(ms)
                    run.completion_tokens += tokens
                    run.texts[i] = text

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(client, c) for c in range(clients)]
        start.wait()
        t0 = time.perf_counter()
        for f in futures:
            f.result()
        run.wall_s = time.perf_counter() - t0
    return run


def measure(model_dir: Path, adapter_dir: Path | None, device: str, max_batch: int, cases: list[dict],
            clients: int, timeout_s: float) -> tuple[Run, str]:
    import httpx

    from ml.serving.completions import HFCompletionBackend, create_app, serve_in_background

    backend = HFCompletionBackend(model_dir, adapter_dir, device=device, max_batch=max_batch)
    try:
        with serve_in_background(create_app(backend)) as base:
            # warm-up, off the clock: the first generate() pays for lazy initialisation
            httpx.post(f"{base}/v1/completions", json=cases[0], timeout=timeout_s).raise_for_status()
            return load(base, cases, clients, timeout_s), str(backend.device)
    finally:
        backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="Hugging Face model folder (default: the catalog's)")
    ap.add_argument("--adapter-dir", type=Path, help="PEFT LoRA adapter trained on --model-dir")
    ap.add_argument("--model", choices=("m0", "m1", "m2"), help="which catalog model (default: latest M2, else M1)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead (seconds, anywhere)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--max-batch", type=int, default=0, help="max_batch of the batched server (0: --clients)")
    ap.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="per-request HTTP timeout")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1:
        ap.error("--clients and --requests must be at least 1")
    max_batch = args.max_batch or args.clients

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    cases = fim_cases(args.clients * args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            model_dir, adapter_dir, label = tiny_model_dir(Path(tmp) / "tiny"), None, "tiny:qwen2"
        elif args.model_dir:
            model_dir, adapter_dir, label = args.model_dir, args.adapter_dir, str(args.adapter_dir or args.model_dir)
        else:
            from resources.catalog import DuckDBCatalog
            from resources.serve import model_folders

            try:
                key, model_dir, adapter_dir = model_folders(DuckDBCatalog(), args.model)
            except LookupError as exc:
                ap.error(str(exc))
            label = key
        runs: dict[str, Run] = {}
        for name, batch in (("plain", 1), ("batched", max_batch)):
            runs[name], device = measure(model_dir, adapter_dir, args.device, batch, cases, args.clients,
                                         args.timeout_s)
            s = runs[name].summary(name)
            print(f"{name} (max_batch={batch}): p50 {s[f'{name}_latency_ms_p50']} ms, "
                  f"p95 {s[f'{name}_latency_ms_p95']} ms, {s[f'{name}_completions_per_s']} completions/s, "
                  f"{s[f'{name}_decode_tokens_per_s']} decode tokens/s, {runs[name].errors} errors", file=sys.stderr)

    plain, batched = runs["plain"], runs["batched"]
    both = [i for i in plain.texts if i in batched.texts]
    errors = plain.errors + batched.errors
    result = plain.summary("plain") | batched.summary("batched")
    plain_rate = len(plain.latencies_ms) / plain.wall_s
    speedup = len(batched.latencies_ms) / batched.wall_s / plain_rate if plain_rate else None
    result |= {
        "speedup": round(speedup, 3) if speedup is not None else None,
        "errors": errors,
        "clients": args.clients,
        "requests": args.requests,
        "max_batch": max_batch,
        "max_tokens": MAX_TOKENS,
        "same_text": round(sum(plain.texts[i] == batched.texts[i] for i in both) / len(both), 3) if both else None,
        "model": label,
        "device": device,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    order = ["plain_latency_ms_p50", "plain_latency_ms_p95", "batched_latency_ms_p50", "batched_latency_ms_p95",
             "plain_completions_per_s", "batched_completions_per_s", "speedup", "errors", "clients", "requests"]
    emit({k: result[k] for k in order} | {k: v for k, v in result.items() if k not in order})
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()

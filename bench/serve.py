"""Completion server benchmark: the Hugging Face backend vs the llama.cpp backend on the same model, through HTTP.

    python bench/serve.py [--model m0|m1|m2 | --model-dir DIR [--adapter-dir DIR] | --tiny] [--gguf FILE]
                          [--quant q8_0] [--clients 4] [--requests 6] [--batched N] [--threads T]

Each backend is served by ml/serving/completions.py on a real uvicorn server on a free port of 127.0.0.1, one
after the other, over the same model: ``hf`` (transformers, one request at a time), ``llama_cpp`` (the model's GGUF
export: ``--gguf``, else the catalog's `autocomplete_stage_*_gguf` file ``--quant``, else exported here first) and,
with ``--batched N``, ``hf_batched`` (transformers, up to N requests decoded together). Each is measured three ways,
with the same requests:

- latency: one client sends ``--clients`` x ``--requests`` single-line fill-in-the-middle completions one after the
  other (``prompt`` = the lines above a line of a stdlib module and its indentation, ``suffix`` = the lines below,
  ``max_tokens`` 24, ``temperature`` 0, ``stop: ["\\n"]``): p50 / p95 of what the client waits;
- decode: 3 completions of 64 tokens with no stop string after a short code prompt: generated tokens per second
  (``usage.completion_tokens`` over the client's wait, prefill included);
- concurrency: ``--clients`` clients send the single-line requests all at once: completions/s over the wall time;
- typing: what an editor sends while someone types a line: for ``--clients`` of the lines, one request per
  ``TYPING_STEP`` characters typed (the prefix grows by them, the suffix stays), one after the other: p50 latency.
  llama.cpp keeps the previous request's KV cache and recomputes only the tokens after the first difference;
  transformers recomputes the whole prompt. Measured twice: with the PSM prompts the server builds from
  ``prompt`` + ``suffix`` (what Continue's template sends), where the suffix follows the typed text and is
  recomputed each time, and with SPM prompts (``<|fim_prefix|><|fim_suffix|>{suffix}<|fim_middle|>{prefix}``, sent
  pre-rendered; the adapters train on both orders), where the typed text is the end of the prompt.

One request per server before the clock starts warms it up. ``same_text`` is the fraction of single-line requests
that llama.cpp answered exactly like transformers (f16 should be 1.0; a quantized file changes a few greedy picks).
``errors`` counts failed requests of all runs and must be 0 (exit status 1). ``--tiny`` builds a tiny random Qwen2
with a FIM tokenizer and exports it (seconds anywhere).
Last line: {"hf_latency_ms_p50", "llama_cpp_latency_ms_p50", "latency_ratio", "hf_tokens_per_s",
"llama_cpp_tokens_per_s", "hf_completions_per_s", "llama_cpp_completions_per_s", "errors", "typing_latency_ratio",
...}.
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

from ml.serving.fim_probes import SOURCE_MODULES, stdlib_fim_cases, stdlib_fim_spots

DECODE_TOKENS = 64
TYPING_STEP = 6  # characters typed between two requests
DECODE_PROMPTS = ("import os\nimport sys\n\n\ndef main(argv):\n    ", "class Stack:\n    def __init__(self):\n        ",
                  "def parse_config(path):\n    ")


def typing_cases(sessions: int, order: str) -> list[dict]:
    """Single-line FIM requests as a line is typed: the cursor after 0, 6, 12... of its characters; ``order`` psm
    (``prompt`` + ``suffix``, the server renders the prompt) or spm (the prompt rendered here)."""
    from ml.autocomplete.fim import fim_prompt

    cases = []
    for prefix, line, suffix in stdlib_fim_spots(sessions):
        for typed in range(0, len(line), TYPING_STEP):
            text = prefix + line[:typed]
            body = {"prompt": text, "suffix": suffix} if order == "psm" else {"prompt": fim_prompt(text, suffix, "spm")}
            cases.append(body | {"max_tokens": 24, "temperature": 0, "stop": ["\n"]})
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


def pct(values: list[float], q: float) -> float | None:
    # nearest rank: with 24 requests p95 is the slowest one but one, not an interpolation past it
    lat = sorted(values)
    return round(lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))], 1) if lat else None


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


def measure(name: str, backend, cases: list[dict], typing: dict[str, list[dict]], clients: int,
            timeout_s: float) -> tuple[dict, Run]:
    """The three measurements of one backend (see the module docstring); the latency run's texts come back too."""
    import httpx

    from ml.serving.completions import create_app, serve_in_background

    decode_cases = [{"prompt": p, "max_tokens": DECODE_TOKENS, "temperature": 0} for p in DECODE_PROMPTS]
    try:
        with serve_in_background(create_app(backend)) as base:
            # warm-up, off the clock: the first generate() pays for lazy initialisation
            httpx.post(f"{base}/v1/completions", json=cases[0], timeout=timeout_s).raise_for_status()
            latency = load(base, cases, 1, timeout_s)
            decode = load(base, decode_cases, 1, timeout_s)
            concurrent = load(base, cases, clients, timeout_s)
            typed = {order: load(base, requests, 1, timeout_s) for order, requests in typing.items()}
    finally:
        backend.close()
    summary = {
        f"{name}_latency_ms_p50": round(statistics.median(latency.latencies_ms), 1) if latency.latencies_ms else None,
        f"{name}_latency_ms_p95": pct(latency.latencies_ms, 0.95),
        f"{name}_tokens_per_s": round(decode.completion_tokens / decode.wall_s, 2),
        f"{name}_decode_tokens": decode.completion_tokens,
        f"{name}_completions_per_s": round(len(concurrent.latencies_ms) / concurrent.wall_s, 3),
        f"{name}_concurrent_latency_ms_p50": round(statistics.median(concurrent.latencies_ms), 1)
        if concurrent.latencies_ms else None,
        **{f"{name}_typing{'' if order == 'psm' else '_spm'}_latency_ms_p50":
           round(statistics.median(run.latencies_ms), 1) if run.latencies_ms else None for order, run in typed.items()},
        f"{name}_errors": latency.errors + decode.errors + concurrent.errors + sum(r.errors for r in typed.values()),
    }
    print(f"{name}: p50 {summary[f'{name}_latency_ms_p50']} ms, p95 {summary[f'{name}_latency_ms_p95']} ms, "
          f"{summary[f'{name}_tokens_per_s']} tokens/s, {summary[f'{name}_completions_per_s']} completions/s "
          f"with {clients} clients, typing p50 {summary[f'{name}_typing_latency_ms_p50']} ms (psm) "
          f"{summary[f'{name}_typing_spm_latency_ms_p50']} ms (spm), "
          f"{summary[f'{name}_errors']} errors", file=sys.stderr, flush=True)
    return summary, latency


def resolve_model(args, ap, tmp: Path) -> tuple[str, Path, Path | None, Path]:
    """(label, model folder, adapter folder or None, GGUF file) of the command line."""
    from ml.models.gguf_export import export_gguf

    gguf = args.gguf
    if args.tiny:
        model_dir, adapter_dir, label = tiny_model_dir(tmp / "tiny"), None, "tiny:qwen2"
    elif args.model_dir:
        model_dir, adapter_dir, label = args.model_dir, args.adapter_dir, str(args.adapter_dir or args.model_dir)
    else:
        from resources.catalog import DuckDBCatalog
        from resources.serve import gguf_file, model_folders

        catalog = DuckDBCatalog()
        try:
            label, model_dir, adapter_dir = model_folders(catalog, args.model)
            gguf = gguf or gguf_file(catalog, label, args.quant)
        except LookupError as exc:
            ap.error(str(exc))
    if gguf is None:
        quant = args.quant or "q8_0"
        print(f"exporting {label} to GGUF ({quant}) first", file=sys.stderr, flush=True)
        export = export_gguf(model_dir, adapter_dir, tmp / "gguf", quantizations=() if quant == "f16" else (quant,))
        gguf = export.path(quant)
    return label, Path(model_dir), Path(adapter_dir) if adapter_dir else None, Path(gguf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, help="Hugging Face model folder (default: the catalog's)")
    ap.add_argument("--adapter-dir", type=Path, help="PEFT LoRA adapter trained on --model-dir")
    ap.add_argument("--model", choices=("m0", "m1", "m2"), help="which catalog model (default: latest M2, else M1)")
    ap.add_argument("--tiny", action="store_true", help="a tiny random model instead (seconds, anywhere)")
    ap.add_argument("--gguf", type=Path, help="the GGUF file of the same model (default: the catalog's export)")
    ap.add_argument("--quant", default=None, help="which file of the export: f16, q8_0... (default: q8_0)")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=6, help="requests per client")
    ap.add_argument("--batched", type=int, default=0, help="also the HF backend with max_batch N (0: not run)")
    ap.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of both engines (0: their default)")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="per-request HTTP timeout")
    args = ap.parse_args()
    if args.clients < 1 or args.requests < 1:
        ap.error("--clients and --requests must be at least 1")

    import torch

    from ml.serving.completions import HFCompletionBackend
    from ml.serving.llama_cpp_backend import LlamaCppCompletionBackend

    if args.threads:
        torch.set_num_threads(args.threads)
    cases = stdlib_fim_cases(args.clients * args.requests)
    typing = {order: typing_cases(args.clients, order) for order in ("psm", "spm")}
    result: dict = {}
    texts: dict[str, Run] = {}
    with tempfile.TemporaryDirectory() as tmp:
        label, model_dir, adapter_dir, gguf = resolve_model(args, ap, Path(tmp))
        backends = {
            "hf": lambda: HFCompletionBackend(model_dir, adapter_dir, device=args.device, max_batch=1),
            "llama_cpp": lambda: LlamaCppCompletionBackend(gguf, n_threads=args.threads or None),
        }
        if args.batched > 1:
            backends["hf_batched"] = lambda: HFCompletionBackend(model_dir, adapter_dir, device=args.device,
                                                                 max_batch=args.batched)
        for name, make in backends.items():
            summary, texts[name] = measure(name, make(), cases, typing, args.clients, args.timeout_s)
            result |= summary

    hf, llama = texts["hf"].texts, texts["llama_cpp"].texts
    both = [i for i in hf if i in llama]
    errors = sum(v for k, v in result.items() if k.endswith("_errors"))
    ratio = (result["llama_cpp_latency_ms_p50"] / result["hf_latency_ms_p50"]
             if result["hf_latency_ms_p50"] and result["llama_cpp_latency_ms_p50"] else None)
    # llama.cpp's typing latency with the cache-friendly SPM prompts over transformers' with the PSM ones
    typing_ratio = (result["llama_cpp_typing_spm_latency_ms_p50"] / result["hf_typing_latency_ms_p50"]
                    if result["hf_typing_latency_ms_p50"] and result["llama_cpp_typing_spm_latency_ms_p50"] else None)
    result |= {
        "latency_ratio": round(ratio, 3) if ratio is not None else None,  # target <= 1/3
        "typing_latency_ratio": round(typing_ratio, 3) if typing_ratio is not None else None,
        "errors": errors,
        "same_text": round(sum(hf[i] == llama[i] for i in both) / len(both), 3) if both else None,
        "clients": args.clients,
        "requests": args.clients * args.requests,
        "typing_requests": len(typing["psm"]),
        "max_tokens": cases[0]["max_tokens"],
        "model": label,
        "gguf": gguf.name,
        "threads": torch.get_num_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }
    order = ["hf_latency_ms_p50", "llama_cpp_latency_ms_p50", "latency_ratio", "hf_tokens_per_s",
             "llama_cpp_tokens_per_s", "hf_completions_per_s", "llama_cpp_completions_per_s", "errors",
             "typing_latency_ratio"]
    emit({k: result[k] for k in order} | {k: v for k, v in result.items() if k not in order})
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    main()

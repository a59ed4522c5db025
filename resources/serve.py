"""`astforge-serve`: serve an autocomplete model registered in the catalog over OpenAI's completions API.

``astforge-serve --model m2 --port 8000`` (``make serve``) serves the latest `autocomplete_stage_b_adapter` (M2),
``m1`` Stage A, ``m0`` the base with FIM tokens; the default is the latest M2, else M1. ``--backend llama_cpp``
serves the model's GGUF export (`autocomplete_stage_b_gguf`, `autocomplete_stage_a_gguf`; ``--quant`` picks the
file) with llama.cpp, ``hf`` the Hugging Face folder with transformers; ``auto`` (the default) takes llama.cpp when
the export is there. ``--gguf FILE`` serves any GGUF file. The app itself is ml/serving/completions.py; an editor
(VS Code's Continue: editors/continue/config.yaml) talks to it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from resources.catalog import DuckDBCatalog

MODEL_ASSETS = {"m0": "autocomplete_base_model", "m1": "autocomplete_stage_a_adapter",
                "m2": "autocomplete_stage_b_adapter"}
GGUF_ASSETS = {"m1": "autocomplete_stage_a_gguf", "m2": "autocomplete_stage_b_gguf"}


def model_folders(catalog: DuckDBCatalog, model: str | None) -> tuple[str, Path, Path | None]:
    """(model key, base folder, adapter folder or None) of ``model`` (m0 | m1 | m2 | None = the latest M2, else
    M1); ``LookupError`` naming what to materialize when it is not there."""
    wanted = [model] if model else ["m2", "m1"]
    base = catalog.latest_artifact("autocomplete_base_model", "all")
    if base is None or not Path(base["path"]).is_dir():
        raise LookupError("no autocomplete model in the catalog: materialize the autocomplete group first "
                          "(`make demo`, or autocomplete_job in the UI)")
    for key in wanted:
        if key == "m0":
            return key, Path(base["path"]), None
        entry = catalog.latest_artifact(MODEL_ASSETS[key], "all")
        if entry is not None and Path(entry["path"]).is_dir():
            return key, Path(base["path"]), Path(entry["path"])
    raise LookupError(f"{' or '.join(MODEL_ASSETS[k] for k in wanted)} is not materialized: run autocomplete_job")


class StaleExport(LookupError):
    """The latest GGUF export was made from an older adapter than the latest one."""


def gguf_file(catalog: DuckDBCatalog, key: str, quant: str | None) -> Path | None:
    """The GGUF file of model ``key``'s latest export (``quant``: f16, q8_0...; default the quantized one), or None
    when it was not exported; :class:`StaleExport` when the adapter was re-trained since, ``LookupError`` when the
    export lacks ``quant``."""
    from ml.models.gguf_export import GgufExport

    entry = catalog.latest_artifact(GGUF_ASSETS[key], "all") if key in GGUF_ASSETS else None
    if entry is None or not (Path(entry["path"]) / "gguf_export.json").is_file():
        return None
    adapter = catalog.latest_artifact(MODEL_ASSETS[key], "all")
    exported = json.loads(entry["upstream"] or "{}").get(MODEL_ASSETS[key])
    if adapter is not None and exported != adapter["data_version"]:
        raise StaleExport(f"{GGUF_ASSETS[key]} was exported from another {MODEL_ASSETS[key]} than the latest "
                          f"({exported} vs {adapter['data_version']}): re-run gguf_export_job")
    export = GgufExport.load(entry["path"])
    variant = quant or next((v for v in export.files if v != "f16"), "f16")
    try:
        return export.path(variant)
    except KeyError as exc:
        raise LookupError(f"{GGUF_ASSETS[key]} has no {variant} file ({', '.join(export.files)}): re-materialize it "
                          f"with quantizations: [{variant}]") from exc


def build_backend(args: argparse.Namespace, catalog: DuckDBCatalog):
    """(what is served, the backend) for the parsed command line."""
    from ml.serving.completions import HFCompletionBackend
    from ml.serving.llama_cpp_backend import LlamaCppCompletionBackend

    # every layer to the GPU when llama.cpp was built with one (LLAMA_CMAKE_ARGS=-DGGML_CUDA=ON); a CPU build ignores it
    gpu_layers = 0 if args.device == "cpu" else -1
    if args.gguf:
        return f"{args.gguf} (llama.cpp)", LlamaCppCompletionBackend(args.gguf, n_threads=args.threads,
                                                                     n_gpu_layers=gpu_layers)
    key, base, adapter = model_folders(catalog, args.model)
    gguf = None
    if args.backend != "hf":
        try:
            gguf = gguf_file(catalog, key, args.quant)
        except StaleExport as exc:
            if args.backend == "llama_cpp":
                raise
            print(f"astforge-serve: {exc}; serving the adapter with transformers meanwhile", file=sys.stderr)
    if args.backend == "llama_cpp" and gguf is None:
        raise LookupError(f"{GGUF_ASSETS.get(key, 'a GGUF export of ' + key)} is not materialized: run "
                          "gguf_export_job (or serve with --backend hf)")
    if gguf is not None:
        return f"{key} ({gguf}, llama.cpp)", LlamaCppCompletionBackend(gguf, n_threads=args.threads,
                                                                       n_gpu_layers=gpu_layers)
    # one model id whichever of m0/m1/m2 is served: editors/continue/config.yaml names it
    return f"{key} ({adapter or base}, transformers)", HFCompletionBackend(base, adapter, device=args.device,
                                                                           max_batch=args.max_batch)


def main(argv: Sequence[str] | None = None) -> int:
    from ml.serving.completions import serve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_ASSETS), default=None,
                        help="m0 base, m1 Stage A, m2 Stage B (default: the latest M2, else M1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    # Batching lost on 2 CPU cores (bench/serve.py: 0.91x completions/s; short single-line answers after long
    # prompts are prefill-bound and padding grows the prefill); try --max-batch 4 on a GPU.
    parser.add_argument("--max-batch", type=int, default=1, help="queued requests decoded together (hf backend)")
    parser.add_argument("--backend", choices=("auto", "hf", "llama_cpp"), default="auto",
                        help="llama_cpp: the model's GGUF export; hf: transformers; auto: llama_cpp when exported")
    parser.add_argument("--quant", default=None, help="GGUF file of the export: f16, q8_0... (default: the "
                                                      "quantized one)")
    parser.add_argument("--gguf", type=Path, default=None, help="serve this GGUF file with llama.cpp instead")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp CPU threads (default: all cores)")
    args = parser.parse_args(argv)
    try:
        what, backend = build_backend(args, DuckDBCatalog())
    except (LookupError, ValueError, RuntimeError) as exc:
        print(f"astforge-serve: {exc}", file=sys.stderr)
        return 2
    print(f"astforge-serve: {what} on http://{args.host}:{args.port}/v1/", flush=True)
    serve(backend, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

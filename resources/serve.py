"""`astforge-serve`: serve an autocomplete model registered in the catalog over OpenAI's completions API.

``astforge-serve --model m2 --port 8000`` (``make serve``) loads the latest `autocomplete_stage_b_adapter` (M2) on
its base, ``m1`` Stage A, ``m0`` the base with FIM tokens; the default is the latest M2, else M1. The app itself
is ml/serving/completions.py; an editor (VS Code's Continue: editors/continue/config.yaml) talks to it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from resources.catalog import DuckDBCatalog

MODEL_ASSETS = {"m0": "autocomplete_base_model", "m1": "autocomplete_stage_a_adapter",
                "m2": "autocomplete_stage_b_adapter"}


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


def main(argv: Sequence[str] | None = None) -> int:
    from ml.serving.completions import HFCompletionBackend, serve

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODEL_ASSETS), default=None,
                        help="m0 base, m1 Stage A, m2 Stage B (default: the latest M2, else M1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"))
    # Batching lost on 2 CPU cores (bench/serve.py: 0.91x completions/s; short single-line answers after long
    # prompts are prefill-bound and padding grows the prefill); try --max-batch 4 on a GPU.
    parser.add_argument("--max-batch", type=int, default=1, help="queued requests decoded together")
    args = parser.parse_args(argv)
    try:
        key, base, adapter = model_folders(DuckDBCatalog(), args.model)
        # one model id whichever of m0/m1/m2 is served: editors/continue/config.yaml names it
        backend = HFCompletionBackend(base, adapter, device=args.device, max_batch=args.max_batch)
    except (LookupError, ValueError) as exc:
        print(f"astforge-serve: {exc}", file=sys.stderr)
        return 2
    print(f"astforge-serve: {key} ({adapter or base}) on http://{args.host}:{args.port}/v1/", flush=True)
    serve(backend, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())

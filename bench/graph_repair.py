"""Graph U-Net against a Transformer of the same size on syntax repair of test-split functions of a slice.

The graph_repair recipe end to end, outside Dagster: functions of the standard library (sorted files, the corpus's
own extractor and alpha-renaming) -> graphs -> graded corruptions -> both models trained on the same rows for the
same steps and batch size -> each model's relabel threshold chosen on dev -> test repair at every noise level
(one-shot and iterative, grammar mask on and off, the Z3 check). The split is the asset's: ``split_of`` the group
key of each function's alpha-renamed code. Parameters are matched within 10% (``transformer_matching``); the
slot-frequency baseline is measured in the same run. The same ``ml.graph_repair`` functions as the assets (rows,
``recipe.fit_denoiser``, evaluation).

    python bench/graph_repair.py                       # ~5M parameters: hidden 256
    python bench/graph_repair.py --hidden 128 --steps 400 --functions 1500 --max-nodes 80   # the demo's sizes
    python bench/graph_repair.py --language javascript   # or java: the slice's default corpus (npm, the JDK), the
                                                         # half of its files the grammar tables were not read from

Last line: ``{"graph_unet_exact_repair", "transformer_exact_repair", "slot_frequency_exact_repair" (mid noise,
one-shot with the grammar mask, test), "exact_repair_evidence" ({model: "0.333 [0.2, 0.5] n=41"}),
"diff_graph_unet_vs_transformer" ({procedure: {level: {value, n, ci_low, ci_high, verdict}}}, paired over the same
test examples), "relabel_threshold" ({model: chosen on dev}), "graph_unet_params", "transformer_params",
"graph_unet_train_s", "transformer_train_s", "valid_rate_masked", "valid_rate_unmasked" (the Graph U-Net's, mid
noise), "iterative": {...}, "by_noise": {model: {level: {procedure: {node_accuracy, exact, valid}}}}, "z3": {...},
"grammar_dead_ends" (nodes the grammar left no label for: 0 unless a rule is missing), "test_rows", "dev_rows",
"train_rows", "test_functions", "seconds"}``.
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import emit, peak_rss_mb  # noqa: E402


def stdlib_units(max_files: int) -> list[dict]:
    from ml.languages import get_language

    spec = get_language("python")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)
    units = []
    for path in files[:max_files]:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        units += [u.to_row() for u in spec.extractor(text, str(path.relative_to(root)), "stdlib").units]
    return units


def corpus_units(language: str, max_files: int) -> list[dict]:
    """Units of the slice's default source, from the files ``table_file`` leaves out (the tree-sitter slot tables
    of ``ml.graph_repair.treesitter_grammar`` were read off the others)."""
    from ml.codec.treesitter_compact import table_file
    from ml.corpus.filters import FileFilter
    from ml.corpus.ingest import extract_units, read_files
    from ml.languages import get_language

    files = read_files(language, get_language(language).default_source(), None, FileFilter())
    held = sorted((f for f in files.rows if f.text is not None and not table_file(f.path)), key=lambda f: f.path)
    units, _ = extract_units(language, held[:max_files], workers=1)
    return [u.to_row() for u in units]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--functions", type=int, default=6000)
    ap.add_argument("--max-nodes", type=int, default=120)
    ap.add_argument("--max-files", type=int, default=600)
    ap.add_argument("--corruptions", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--language", default="python", choices=["python", "javascript", "java"])
    args = ap.parse_args()

    from ml.graph_repair.evaluation import (
        evaluate_models,
        paired_differences,
    )
    from ml.graph_repair.recipe import fit_denoiser
    from ml.graph_repair.rows import graph_rows, repair_rows
    from ml.graph_repair.training import TrainSettings
    from ml.languages import get_language
    from ml.splits import split_counts
    from ml.stats import verdict

    start = time.perf_counter()
    language = args.language
    units = stdlib_units(args.max_files) if language == "python" else corpus_units(language, args.max_files)
    rows, _, _ = graph_rows(units, language, get_language(language).renamer, 20, args.max_nodes, args.functions)
    examples = repair_rows(rows, args.corruptions, args.seed)
    train = [e for e in examples if e["split"] == "train"]
    dev = [e for e in examples if e["split"] == "dev"]
    test = [e for e in examples if e["split"] == "test"]
    functions = split_counts(r["split"] for r in rows)
    print(f"{len(rows)} functions {functions}, {len(train)} training rows, {len(dev)} dev rows, {len(test)} test "
          "rows", flush=True)
    settings = TrainSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    models, stats, params = {}, {}, {}
    for kind in ("graph_unet", "transformer"):
        fitted = fit_denoiser(kind, train, settings, hidden=args.hidden, depth=2,
                              target_params=params.get("graph_unet"), language=language,
                              log=lambda m, k=kind: print(f"{k} {m}", flush=True))
        params[kind], stats[kind] = fitted.params, fitted.stats
        models[kind] = (fitted.model, fitted.vocab, fitted.priors)
    results, tuning = evaluate_models(models, dev, test, log=lambda m: print(m, flush=True))
    differences = paired_differences(results)
    head = "one_shot_grammar"
    emit({
        "language": language,
        "graph_unet_exact_repair": results["graph_unet"]["mid"][head]["exact"].value,
        "transformer_exact_repair": results["transformer"]["mid"][head]["exact"].value,
        "slot_frequency_exact_repair": results["slot_frequency"]["mid"][head]["exact"].value,
        "exact_repair_evidence": {m: str(r["mid"][head]["exact"]) for m, r in results.items()},
        "diff_graph_unet_vs_transformer": {
            p: {lv: {"value": round(d.value, 4), "n": d.n, "ci_low": round(d.ci_low, 4), "ci_high": round(d.ci_high, 4),
                     "verdict": verdict(d, "graph_unet", "transformer")}
                for (p2, lv), d in differences.items() if p2 == p}
            for p in dict.fromkeys(p for p, _ in differences)},
        "relabel_threshold": {m: t["threshold"] for m, t in tuning.items()},
        "graph_unet_params": params["graph_unet"], "transformer_params": params["transformer"],
        "graph_unet_train_s": round(stats["graph_unet"]["train_s"], 1),
        "transformer_train_s": round(stats["transformer"]["train_s"], 1),
        "valid_rate_masked": results["graph_unet"]["mid"][head]["valid"].value,
        "valid_rate_unmasked": results["graph_unet"]["mid"]["one_shot"]["valid"].value,
        "iterative": {m: str(results[m]["mid"]["iterative_grammar"]["exact"]) for m in ("graph_unet", "transformer")},
        "by_noise": {m: {lv: {p: {k: str(v) for k, v in s.items() if k != "n"} for p, s in by.items()}
                         for lv, by in r.items() if lv in ("low", "mid", "high")} for m, r in results.items()},
        "z3": {m: r["z3"]["stats"] for m, r in results.items() if m != "slot_frequency"},
        "grammar_dead_ends": {m: r["grammar"]["dead_ends"] for m, r in results.items()},
        "final_loss": {m: round(s["final_loss"], 4) for m, s in stats.items()},
        "test_rows": len(test), "dev_rows": len(dev), "train_rows": len(train), "test_functions": functions["test"],
        "steps": args.steps, "batch_size": args.batch_size,
        "peak_rss_mb": peak_rss_mb(), "seconds": round(time.perf_counter() - start, 1),
    })


if __name__ == "__main__":
    main()

"""Scoring and evaluating repairs (``ml.graph_repair.training`` trains, ``ml.graph_repair.decoding`` repairs): each
repaired tree against its clean graph, the relabel threshold chosen on ``dev``, both models and the slot-frequency
baseline on ``test`` with every figure an :class:`~ml.stats.Estimate`, and the Graph U-Net vs Transformer paired
differences."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ml.graph_repair.asg import Asg
from ml.graph_repair.backend import backend_for
from ml.graph_repair.baseline import SlotFrequency
from ml.graph_repair.corrupt import NOISE_LEVELS
from ml.graph_repair.decoding import Decoder, repair_iterative, repair_one_shot
from ml.graph_repair.edits import RepairTree
from ml.graph_repair.grammar import Vocabulary
from ml.graph_repair.rows import graph_of
from ml.graph_repair.training import predict
from ml.stats import Estimate, mean, paired_difference, rate


def score(trees: Sequence[RepairTree], examples: Sequence[dict], vocab: Vocabulary) -> list[dict]:
    """Per example: accuracy on corrupted nodes, exact repair (the whole tree), validity (decodes and compiles).

    Both trees are compared as the vocabulary says them (a rare name the input carried and nobody touched stays
    right); a corrupted node whose clean label is out of the vocabulary can never be repaired (an ``<unk>``
    answer is not its name), so it counts wrong and its example is not exact."""
    out = []
    is_valid = backend_for(vocab.language).is_valid
    for tree, e in zip(trees, examples, strict=True):
        clean = graph_of(e, "clean_")
        clean = Asg([vocab.normalize(x) for x in clean.labels], clean.parents, clean.fields)
        corrupted = [i for i, c in enumerate(e["corrupted"]) if c]
        sayable = [vocab.normalize(e["targets"][i]) == e["targets"][i] for i in corrupted]
        right = sum(ok and tree.labels.get(i) == e["targets"][i] for i, ok in zip(corrupted, sayable, strict=True))
        repaired, _ = tree.to_asg()
        said = Asg([vocab.normalize(x) for x in repaired.labels], repaired.parents, repaired.fields)
        out.append({"id": e["id"], "noise": e["noise"], "node_accuracy": right / max(1, len(corrupted)),
                    "exact": all(sayable) and said.key() == clean.key(), "valid": is_valid(repaired),
                    "is_tree": tree.is_tree()})
    return out


def summarize(rows: Sequence[dict], split: str = "test") -> dict:
    """Exact repair and validity as rates (Wilson), node accuracy as a mean (bootstrap), each with its n and 95%
    interval on ``split``; ``n`` the number of examples."""
    return {"node_accuracy": mean([r["node_accuracy"] for r in rows], split=split),
            "exact": rate([bool(r["exact"]) for r in rows], split=split),
            "valid": rate([bool(r["valid"]) for r in rows], split=split), "n": len(rows)}


def evaluate(model: nn.Module, examples: Sequence[dict], vocab: Vocabulary, priors: dict, diffusion_steps: int = 4,
             z3_tries: int = 4, log: Callable[[str], None] = print, *, split: str = "test",
             relabel_threshold: float = 0.7) -> dict:
    """{noise level: {procedure: summary}} for the procedures one_shot, one_shot_grammar, one_shot_grammar_z3
    (where the language has a Z3 check), iterative_grammar (``summarize``: estimates on ``split``); ``scored``:
    {procedure: the per-example rows (``score``)}, which the paired comparisons align by id; z3 rejection counts
    ride along on one_shot_grammar_z3."""
    graphs = [graph_of(e) for e in examples]
    backend = backend_for(vocab.language)
    grammar = backend.grammar(vocab)
    # one_shot_grammar_z3 only where the language has a Z3 check (Python): elsewhere it would repeat
    # one_shot_grammar figure for figure
    with_z3 = backend.violations is not None
    decoders = {"one_shot": Decoder(vocab, priors, relabel_threshold=relabel_threshold),
                **{p: Decoder(vocab, priors, grammar, relabel_threshold) for p in (
                    "one_shot_grammar", *(["one_shot_grammar_z3"] if with_z3 else []), "iterative_grammar")}}
    runs: dict[str, list[RepairTree]] = {}
    runs["one_shot"], _ = repair_one_shot(model, graphs, decoders["one_shot"])
    runs["one_shot_grammar"], z3_stats = repair_one_shot(model, graphs, decoders["one_shot_grammar"])
    if with_z3:
        runs["one_shot_grammar_z3"], z3_stats = repair_one_shot(model, graphs, decoders["one_shot_grammar_z3"],
                                                                z3_tries=z3_tries)
    runs["iterative_grammar"] = repair_iterative(model, graphs, decoders["iterative_grammar"], diffusion_steps)
    # how often the constraints flag a correct program (0: they only reject real inconsistencies)
    if z3_tries and with_z3:
        clean = {e["unit_id"]: graph_of(e, "clean_") for e in examples}
        z3_stats["z3_clean_flagged"] = sum(bool(backend.violations(backend.to_code(g))) for g in clean.values())
        z3_stats["z3_clean_checked"] = len(clean)
    out: dict = {"scored": {}}
    for proc, trees in runs.items():
        scored = score(trees, examples, vocab)
        out["scored"][proc] = scored
        for level in NOISE_LEVELS:
            out.setdefault(level, {})[proc] = summarize([r for r in scored if r["noise"] == level], split)
        log(f"{proc}: exact " + ", ".join(f"{lv} {out[lv][proc]['exact']}" for lv in NOISE_LEVELS))
    out["z3"] = {"stats": {k: float(v) for k, v in z3_stats.items()}}
    out["grammar"] = {"dead_ends": float(sum(d.dead_ends for d in decoders.values())),
                      "iterative_prior_settled": float(decoders["iterative_grammar"].prior_settled)}
    return out


RELABEL_THRESHOLDS = (0.5, 0.7, 0.9)  # the dev sweep: 0.5 relabels kept nodes freely, 0.9 hardly ever


def tune_relabel_threshold(model: nn.Module, dev: Sequence[dict], vocab: Vocabulary, priors: dict,
                           candidates: Sequence[float] = RELABEL_THRESHOLDS,
                           default: float = 0.7) -> tuple[float, dict[float, Estimate]]:
    """The ``relabel_threshold`` with the best exact repair on the ``dev`` rows (one-shot with the grammar mask, all
    noise levels; a tie goes to the higher threshold, which relabels fewer kept nodes), and each candidate's dev
    estimate. One forward pass; only the decoding is repeated. No dev rows or one candidate: nothing is tuned."""
    if not dev or len(candidates) <= 1:
        return (candidates[0] if candidates else default), {}
    graphs = [graph_of(e) for e in dev]
    logits = predict(model, graphs, vocab)
    grammar = backend_for(vocab.language).grammar(vocab)
    by: dict[float, Estimate] = {}
    for t in candidates:
        decoder = Decoder(vocab, priors, grammar, float(t))
        trees = [decoder.one_shot(g, lg)[0] for g, lg in zip(graphs, logits, strict=True)]
        by[float(t)] = rate([bool(r["exact"]) for r in score(trees, dev, vocab)], split="dev")
    return max(by, key=lambda t: (by[t].value, t)), by


def evaluate_models(models: dict[str, tuple[nn.Module, Vocabulary, dict]], dev: Sequence[dict],
                    test: Sequence[dict], *, thresholds: Sequence[float] = RELABEL_THRESHOLDS,
                    diffusion_steps: int = 4, z3_tries: int = 4,
                    log: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, dict]]:
    """Each trained model (``{kind: (model, vocab, priors)}``) with its relabel threshold chosen on ``dev``, then
    measured on ``test``; the slot-frequency baseline (the first model's vocabulary and priors) beside them.
    Returns ({model: evaluate(...)}, {model: {"threshold": t, "dev_exact": {t: Estimate}}})."""
    results, tuning = {}, {}
    for kind, (model, vocab, priors) in models.items():
        threshold, sweep = tune_relabel_threshold(model, dev, vocab, priors, thresholds)
        tuning[kind] = {"threshold": threshold, "dev_exact": sweep}
        log(f"{kind}: relabel threshold {threshold} (dev exact: "
            + ", ".join(f"{t} {e}" for t, e in sweep.items()) + f"); {len(test)} test rows")
        results[kind] = evaluate(model, test, vocab, priors, diffusion_steps, z3_tries,
                                 log=lambda m, k=kind: log(f"{k}: {m}"), relabel_threshold=threshold)
    _, vocab, priors = next(iter(models.values()))
    results["slot_frequency"] = evaluate(SlotFrequency(vocab, priors), test, vocab, priors, diffusion_steps, 0,
                                         log=lambda m: None)
    return results, tuning


def paired_differences(results: dict[str, dict], better: str = "graph_unet", worse: str = "transformer",
                       metric: str = "exact", procedures: Sequence[str] | None = None,
                       ) -> dict[tuple[str, str], Estimate]:
    """{(procedure, noise level): mean of ``better - worse`` on ``metric`` over the same test examples (aligned by
    id), with its paired-bootstrap interval}; ``procedures``: only these (default: all of ``better``'s)."""
    out = {}
    for proc, rows in results[better]["scored"].items():
        if procedures is not None and proc not in procedures:
            continue
        other = {r["id"]: r for r in results[worse]["scored"][proc]}
        for level in NOISE_LEVELS:
            mine = [r for r in rows if r["noise"] == level]
            if missing := [r["id"] for r in mine if r["id"] not in other]:
                raise ValueError(f"{worse} was not scored on {len(missing)} of {better}'s examples: {missing[:3]}")
            out[(proc, level)] = paired_difference([float(r[metric]) for r in mine],
                                                   [float(other[r["id"]][metric]) for r in mine],
                                                   split=results[better][level][proc][metric].split)
    return out


def trained_vs_baseline(results: dict[str, dict], procedure: str = "one_shot_grammar",
                        ) -> dict[str, dict[tuple[str, str], Estimate]]:
    """Each trained model against the slot-frequency baseline (the group's "base": no training beyond label
    counts), paired on the same test examples: {model: {(procedure, noise level): difference}}."""
    return {m: paired_differences(results, m, "slot_frequency", procedures=[procedure])
            for m in results if m != "slot_frequency"}


def graph_repair_metrics(results: dict[str, dict], differences: dict[tuple[str, str], Estimate],
                         tuning: dict[str, dict],
                         vs_baseline: dict[str, dict[tuple[str, str], Estimate]] | None = None,
                         ) -> dict[str, Estimate | float]:
    """``{model}_{procedure}_{node_accuracy|exact|valid}_{noise}`` estimates, the paired differences as
    ``diff_graph_unet_vs_transformer_{procedure}_exact_{noise}`` (and ``diff_{model}_vs_slot_frequency_...`` from
    ``vs_baseline``) and each model's chosen relabel threshold."""
    metrics: dict[str, Estimate | float] = {
        f"{model}_{proc}_{k}_{level}": by[level][proc][k] for model, by in results.items() for level in NOISE_LEVELS
        for proc in by[level] for k in ("node_accuracy", "exact", "valid")}
    metrics |= {f"diff_graph_unet_vs_transformer_{proc}_exact_{level}": d for (proc, level), d in differences.items()}
    metrics |= {f"diff_{model}_vs_slot_frequency_{proc}_exact_{level}": d
                for model, by in (vs_baseline or {}).items() for (proc, level), d in by.items()}
    metrics |= {f"{model}_relabel_threshold": float(t["threshold"]) for model, t in tuning.items()}
    return metrics


def example_rows(results: dict[str, dict]) -> list[dict]:
    """The per-example scores behind every estimate: (model, procedure, id, noise, node_accuracy, exact, valid)."""
    return [{"model": model, "procedure": proc, **{k: r[k] for k in ("id", "noise", "node_accuracy", "exact",
                                                                   "valid")}}
            for model, by in results.items() for proc, rows in by["scored"].items() for r in rows]

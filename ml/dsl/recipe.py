"""The DSL pipeline's recipe, called by the `dsl` assets and by bench/dsl_learning_curve.py alike: teacher labels
for the requests (each with its group key and its train/dev/test split, decided once here), training rows from the
labelled dataset, the SFT rows (train) and validation rows (dev), the (prompt, completion) pairs a trainer sees, the
SFT and DPO trainer settings, the evaluation rows (test), one evaluation of a model in both decoding modes, and the
report from the published artifacts."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.dsl.dataset import evaluation_group, group_key, request_split
from ml.dsl.domains import schema_errors
from ml.dsl.format import ast_to_text, completion_text, prompt_text, wrap_prompt
from ml.stats import Estimate
from ml.training.dpo import DPOSettings
from ml.training.sft_trainer import PhaseConfig, resolve_trainable_embeddings
from ml.training.trainer_config import settings_into

# Settings of the SFT step that choose rows, precision or the probe, not trainer behaviour.
SFT_RECIPE_SETTINGS = frozenset({"precision", "eval_max_samples", "probe_samples"})
DPO_RECIPE_SETTINGS = frozenset({"precision"})
# evaluation batches as large as training ones
_EVAL_BATCH_TOO = {"per_device_train_batch_size": ("per_device_train_batch_size", "per_device_eval_batch_size")}


def label_requests(queries: Sequence[Mapping[str, Any]], specs: Mapping[str, Any], schemas: Mapping[str, dict],
                   teacher, positives_per_schema: int, on_progress: Callable[[int, int], None] | None = None,
                   every: int = 500, *, dev_fraction: float = 0.1,
                   test_fraction: float = 0.2) -> tuple[list[dict], dict[str, int]]:
    """Dataset rows for requests (``id domain domain_split lang text teacher_ast_json``) labelled by ``teacher``: at
    most ``positives_per_schema`` per domain, each label valid against its domain's schema. Each row's
    ``group_key`` is its label's canonical AST (so both languages of a request share it, whatever the teacher) and
    its ``split`` is decided from that key (:func:`ml.dsl.dataset.request_split`); ``group`` says seen or held-out
    domain. Returns the rows and how many requests were skipped, by reason. ``on_progress(done, total)`` every
    ``every`` requests. A dead teacher raises its ``TeacherUnavailable``: nothing is returned half-labelled."""
    from ml.dsl.teachers.base import TeacherQuery

    skipped = {"teacher_no_label": 0, "schema_invalid_label": 0, "over_positive_cap": 0}
    rows: list[dict] = []
    kept: dict[str, int] = {}
    for i, q in enumerate(queries):
        if on_progress is not None and i and i % every == 0:
            on_progress(i, len(queries))
        domain = q["domain"]
        if kept.get(domain, 0) >= positives_per_schema:
            skipped["over_positive_cap"] += 1
            continue
        known = json.loads(q["teacher_ast_json"]) if q["teacher_ast_json"] else None
        ast = teacher.label(specs[domain], schemas[domain],
                            TeacherQuery(domain=domain, lang=q["lang"], text=q["text"], ast=known))
        if ast is None:
            skipped["teacher_no_label"] += 1
            continue
        if schema_errors(ast, schemas[domain]):
            skipped["schema_invalid_label"] += 1
            continue
        kept[domain] = kept.get(domain, 0) + 1
        key = group_key(domain, ast)
        rows.append({"id": q["id"], "domain": domain, "group_key": key,
                     "split": request_split(q["domain_split"], key, dev=dev_fraction, test=test_fraction),
                     "group": evaluation_group(q["domain_split"]), "lang": q["lang"], "query": q["text"],
                     "ast_json": ast_to_text(ast), "valid": True, "mutation": None, "errors": None})
    return rows, skipped


def sft_phase_config(settings: Mapping[str, Any], *, tiny_base: bool) -> PhaseConfig:
    """The DSL student's ``PhaseConfig`` from the SFT step's settings (``config.model_dump()``, TRL's field names)
    and the recipe's fixed choices: prompt and completion joined as they are (the chat template separates them and
    the completion already ends with the end token), linear decay, evaluation batches as large as training ones."""
    return settings_into(PhaseConfig, settings, recipe_settings=SFT_RECIPE_SETTINGS, renamed=_EVAL_BATCH_TOO,
                         separator="", add_eos=False, lr_scheduler_type="linear",
                         # a random-init tiny: base also trains its embedding rows; a pretrained base keeps them
                         trainable_embeddings=resolve_trainable_embeddings("auto", tiny_base=tiny_base,
                                                                           pretrained="none"))


def dpo_settings(settings: Mapping[str, Any]) -> DPOSettings:
    """``DPOSettings`` from the DPO step's settings (``config.model_dump()``, TRL's field names)."""
    return settings_into(DPOSettings, settings, recipe_settings=DPO_RECIPE_SETTINGS)


def training_rows(data: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict], *, schema_view: str,
                  include_invalid: bool = False, max_samples: int = 0, seed: int = 0) -> tuple[list[dict], int]:
    """Prompt/completion rows from labelled dataset rows (``id domain group_key split group lang query ast_json
    valid``), split and group kept; with ``max_samples`` the training split is capped by a seeded sample. Returns
    the rows and how many were capped."""
    rows = []
    for r in data:
        if not r["valid"] and not include_invalid:
            continue
        rows.append({"id": r["id"], "domain": r["domain"], "group_key": r["group_key"], "split": r["split"],
                     "group": r["group"], "lang": r["lang"],
                     "query": r["query"], "prompt": prompt_text(schemas[r["domain"]], r["query"], schema_view),
                     "completion": r["ast_json"], "valid": r["valid"]})
    train = [r for r in rows if r["split"] == "train"]
    if not max_samples or len(train) <= max_samples:
        return rows, 0
    drop = {r["id"] for r in random.Random(f"max_samples:{seed}").sample(train, len(train) - max_samples)}
    return [r for r in rows if r["id"] not in drop], len(drop)


def sft_rows(rows: Sequence[Mapping[str, Any]], cap: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, validation) of the SFT step: the ``train`` rows of the seen domains, and at most ``cap`` of the
    ``dev`` rows (a seeded sample; ``cap`` 0 = none). Test rows and held-out domains are never read here."""
    train = [dict(r) for r in rows if r["split"] == "train" and r["group"] == "seen"]
    dev = [dict(r) for r in rows if r["split"] == "dev" and r["group"] == "seen"]
    return train, random.Random(seed).sample(dev, min(cap, len(dev)))


def model_inputs(tokenizer, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(prompt in the tokenizer's chat template, completion + end token) pairs: what SFT trains on and what
    generation is prompted with."""
    return [(wrap_prompt(tokenizer, r["prompt"]), completion_text(tokenizer, r["completion"])) for r in rows]


def evaluation_rows(rows: Sequence[Mapping[str, Any]], samples: int, seed: int) -> list[dict]:
    """Up to ``samples`` valid ``test`` requests of each group: the training domains' (seen), the held-out
    domains' (heldout)."""
    out = []
    for group in ("seen", "heldout"):
        mine = [dict(r) for r in rows if r["split"] == "test" and r["group"] == group and r["valid"]]
        out += random.Random(f"{seed}:{group}").sample(mine, min(samples, len(mine)))
    return out


def evaluate_both_modes(model, tokenizer, rows: Sequence[Mapping[str, Any]], schemas: Mapping[str, dict],
                        specs: Mapping[str, Any], teacher, *, batch_size: int = 16, label: str = "",
                        modes: Sequence[bool] = (False, True),
                        on_log: Callable[[str], None] | None = None) -> tuple[dict, list[dict]]:
    """Metrics of ``model`` on ``rows`` unconstrained and schema-constrained (``[heldout_]<metric>[_constrained]``
    -> ``Estimate`` with its n and interval, split ``test``) and one result row per request and mode (``mode`` =
    unconstrained | constrained)."""
    from ml.dsl.probe import evaluate_student

    metrics: dict = {}
    results: list[dict] = []
    for constrained in modes:
        mode = "constrained" if constrained else "unconstrained"
        started = time.monotonic()
        m, scored = evaluate_student(model, tokenizer, rows, schemas, specs, teacher, constrained=constrained,
                                     batch_size=batch_size)
        metrics.update(m)
        results += scored
        if on_log is not None:
            on_log(f"{label} {mode}: {len(rows)} requests in {time.monotonic() - started:.0f}s: "
                   + ", ".join(f"{k}={v}" for k, v in m.items()))
    return metrics, results


@dataclass
class Report:
    markdown: str  # names its images as ``<name>.png`` files beside it
    images: dict[str, bytes]  # PNG by name: rates, sft_curve, dpo_curve
    metrics: dict[str, dict[str, Estimate]]  # base | sft | dpo -> the evaluation's metrics (from its result rows)
    differences: dict[str, dict[str, Estimate]]  # sft_vs_base | dpo_vs_sft -> paired differences per metric

    def inline_markdown(self) -> str:
        """The markdown with its images embedded as data URLs (for a viewer that sees only the text)."""
        import base64

        text = self.markdown
        for name, png in self.images.items():
            text = text.replace(f"({name}.png)", f"(data:image/png;base64,{base64.b64encode(png).decode()})")
        return text

    def flat_metrics(self) -> dict[str, Estimate]:
        """``<model>_<metric>`` and ``<comparison>_<metric>`` estimates (for metrics files and the catalog)."""
        return {f"{owner}_{key}": value for table in (self.metrics, self.differences)
                for owner, metrics in table.items() for key, value in metrics.items()}


def _base_model_id(folder: Path) -> str:
    """The base a student was built from (recorded by dsl_base_model in its tokenizer config), else the folder."""
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        return json.loads(cfg.read_text()).get("astforge_base_model") or str(folder)
    return str(folder)


def build_report(folders: Mapping[str, Path], curves: Mapping[str, Sequence[tuple[int, str, float]]],
                 dataset_rows: int) -> Report:
    """Base (M0) vs SFT vs DPO from the published folders, keyed ``base_eval sft_eval dpo_eval`` (``rows.parquet``:
    the per-request results every figure is computed from), ``sft_adapter dpo_adapter`` (``train_result.json``),
    ``base_model`` and ``domain_specs`` (``rows.parquet``), and the adapters' training ``curves`` keyed
    ``sft_adapter dpo_adapter``. Differences are paired on ``(id, mode)``: SFT − base, DPO − SFT."""
    import pyarrow.parquet as pq

    from ml.dsl.evaluation import metrics_from_results, paired_differences
    from ml.dsl.report import dpo_curve_plot, dsl_report_markdown, rates_plot, sft_curve_plot

    rows = {k: pq.read_table(Path(folders[f"{k}_eval"]) / "rows.parquet").to_pylist() for k in ("base", "sft", "dpo")}
    metrics = {k: metrics_from_results(v) for k, v in rows.items()}
    differences = {"sft_vs_base": paired_differences(rows["sft"], rows["base"]),
                   "dpo_vs_sft": paired_differences(rows["dpo"], rows["sft"])}
    trained = {k: json.loads((Path(folders[f"{k}_adapter"]) / "train_result.json").read_text()) for k in ("sft", "dpo")}
    specs = pq.read_table(Path(folders["domain_specs"]) / "rows.parquet").to_pylist()
    images = {
        "rates": rates_plot({"base": metrics["base"], "SFT": metrics["sft"], "DPO": metrics["dpo"]}),
        "sft_curve": sft_curve_plot(curves["sft_adapter"]),
        "dpo_curve": dpo_curve_plot(curves["dpo_adapter"]),
    }
    summary = {
        "teacher": specs[0]["teacher"] if specs else "?",
        "base_model": _base_model_id(Path(folders["base_model"])),
        "train_domains": ", ".join(s["domain"] for s in specs if s["split"] == "train"),
        "heldout_domains": ", ".join(s["domain"] for s in specs if s["split"] != "train") or "none",
        "dataset_rows": dataset_rows, "sft_steps": trained["sft"]["steps"], "dpo_steps": trained["dpo"]["steps"],
        "dpo_pairs": trained["dpo"]["pairs"],
    }
    markdown = dsl_report_markdown(sft_metrics=metrics["sft"], dpo_metrics=metrics["dpo"], sft_rows=rows["sft"],
                                   dpo_rows=rows["dpo"], images={k: f"{k}.png" for k in images}, summary=summary,
                                   base_metrics=metrics["base"], differences=differences)
    return Report(markdown, images, metrics, differences)

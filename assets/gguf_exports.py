"""`serving` group: each servable model exported as GGUF for llama.cpp and Ollama (f16 + a quantized file, an Ollama
Modelfile), with an asset check that the export answers like the Hugging Face model it came from.

One recipe (ml.models.gguf_export) for three assets: the autocomplete M1 and M2 and the DSL student (the DPO
adapter). Lineage: each export depends on its adapter and base; the catalog records their versions. An export
whose files do not answer like the HF model fails instead of being published."""

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from pydantic import field_validator

from assets.autocomplete import autocomplete_base_model, autocomplete_stage_a_adapter, autocomplete_stage_b_adapter
from assets.config_checks import Fraction, NonNegativeFloat, PositiveInt
from assets.dsl_models import dsl_base_model, dsl_dpo_adapter
from assets.k8s_tags import MODEL_STEP
from assets.publish import UNPARTITIONED as P
from assets.publish import publish_folder, read_upstream
from ml.models.near_tie import NEAR_TIE_EPSILON
from resources import ArtifactStore, DuckDBCatalog

GROUP = "serving"
AGREEMENT_CHECK = "greedy_matches_hf"


class GgufExportConfig(dg.Config):
    # beside the f16 file; the Modelfile uses the first. llama.cpp's names: q8_0, q4_k_m, q5_k_m, q6_k, q4_0...
    quantizations: list[str] = ["q8_0"]
    check_prompts: PositiveInt = 8  # fixed prompts both engines complete greedily
    check_max_tokens: PositiveInt = 24
    # The check fails below these shares of prompts answered like the HF model. f16 runs the same weights rounded to
    # f16, which can flip a greedy pick where transformers' top two logits are nearly tied (M2 re-trained parted from
    # transformers on 1 of 8 prompts): an f16 answer counts when its text is the same, or when it parts at a token
    # where transformers' top two logits are at most f16_near_tie_logit_gap apart and it took the runner-up
    # (ml.models.near_tie). A broken export (wrong tokenizer or pre-tokenizer) parts where the pick clearly leads.
    # A quantized file changes some greedy picks by design: its share counts identical texts only.
    f16_min_agreement: Fraction = 1.0
    f16_near_tie_logit_gap: NonNegativeFloat = NEAR_TIE_EPSILON  # 0: only exact ties
    quantized_min_agreement: Fraction = 0.5
    n_threads: PositiveInt | None = None  # llama.cpp threads for the check (default: all cores)

    @field_validator("quantizations")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        from ml.models.gguf_export import QUANT_TYPES

        unknown = [q for q in value if q not in QUANT_TYPES]
        if unknown:
            raise ValueError(f"unknown quantization(s) {unknown}; known: {sorted(QUANT_TYPES)}")
        return value


@dataclass(frozen=True)
class ServableModel:
    asset: str
    base_asset: str
    adapter_asset: str
    fim: bool  # a completion model (FIM template, stdlib FIM probes) rather than a chat one (its own prompts)
    ollama_name: str


SERVABLE = {
    "autocomplete_stage_a_gguf": ServableModel("autocomplete_stage_a_gguf", "autocomplete_base_model",
                                               "autocomplete_stage_a_adapter", True, "astforge-autocomplete-m1"),
    "autocomplete_stage_b_gguf": ServableModel("autocomplete_stage_b_gguf", "autocomplete_base_model",
                                               "autocomplete_stage_b_adapter", True, "astforge-autocomplete"),
    "dsl_student_gguf": ServableModel("dsl_student_gguf", "dsl_base_model", "dsl_dpo_adapter", False,
                                      "astforge-dsl"),
}


def _threshold(config: GgufExportConfig, variant: str) -> float:
    return config.f16_min_agreement if variant == "f16" else config.quantized_min_agreement


def _counted(agreement, variant: str) -> int:
    """The prompts that count for the check: f16 also counts near ties (see GgufExportConfig)."""
    return agreement.explained if variant == "f16" else agreement.same


def _check_prompts(catalog: DuckDBCatalog, model: ServableModel, adapter_path: str, n: int) -> list:
    if model.fim:
        from ml.serving.fim_probes import stdlib_fim_cases

        return [(c["prompt"], c["suffix"]) for c in stdlib_fim_cases(n)]
    from ml.dsl.format import wrap_prompt
    from ml.models.loading import load_tokenizer

    pairs, _ = read_upstream(catalog, "dsl_dpo_pairs", P)
    tok = load_tokenizer(adapter_path)
    return [(wrap_prompt(tok, p["prompt"]), None) for p in pairs[:n]]


def _export(context: dg.AssetExecutionContext, config: GgufExportConfig, artifacts: ArtifactStore,
            catalog: DuckDBCatalog) -> dg.MaterializeResult:
    from ml.models.gguf_export import compare_answers, export_gguf, greedy_answers, judge_near_ties
    from ml.serving.completion_backend import HFCompletionBackend
    from ml.serving.llama_cpp_backend import LlamaCppCompletionBackend

    model = SERVABLE[context.asset_key.to_user_string()]
    base = catalog.require_artifact(model.base_asset, P)
    adapter = catalog.require_artifact(model.adapter_asset, P)
    prompts = _check_prompts(catalog, model, adapter["path"], config.check_prompts)
    stop = ["\n"] if model.fim else []
    holder: dict = {}

    def build(tmp: Path) -> None:
        try:
            export = export_gguf(base["path"], adapter["path"], tmp, quantizations=config.quantizations,
                                 fim=model.fim, name=model.ollama_name,
                                 log=lambda m: context.log.info(f"{model.asset}: {m}"))
        except (RuntimeError, ValueError, FileNotFoundError) as exc:
            raise dg.Failure(f"{model.asset}: {exc}") from exc
        # the model exactly as exported: no FIM tokens added to a chat model's vocabulary
        reference = HFCompletionBackend(base["path"], adapter["path"], device="cpu", max_batch=1,
                                        fim_tokens=model.fim)
        agreement = {}
        try:  # open until the f16 answers are judged: an idle model does not slow llama.cpp's timing
            expected = greedy_answers(reference, prompts, config.check_max_tokens, stop)
            for variant in export.files:
                candidate = LlamaCppCompletionBackend(export.path(variant), n_threads=config.n_threads)
                try:
                    answers = greedy_answers(candidate, prompts, config.check_max_tokens, stop)
                finally:
                    candidate.close()
                agreement[variant] = compare_answers(expected, answers, prompts)
                if variant == "f16" and agreement[variant].differing:
                    agreement[variant] = judge_near_ties(reference, prompts, agreement[variant],
                                                         config.check_max_tokens, stop, config.f16_near_tie_logit_gap)
                a = agreement[variant]
                context.log.info(f"{model.asset}: {variant} answers like the HF model on {a.same}/{a.total} prompts"
                                 + (f" (+{a.near_ties} near ties)" if a.near_ties else "")
                                 + f" ({answers.seconds} s vs transformers' {expected.seconds} s)")
        finally:
            reference.close()
        failing = {v: a for v, a in agreement.items() if _counted(a, v) < _threshold(config, v) * a.total}
        if failing:  # nothing is published: astforge-serve and Ollama only ever find checked files
            raise dg.Failure(
                f"{model.asset}: the export does not answer like the HF model: "
                + ", ".join(f"{v} {_counted(a, v)}/{a.total} (needs {_threshold(config, v):.0%})"
                            for v, a in failing.items()),
                metadata={f"{v}_differing": dg.MetadataValue.json(a.differing[:3]) for v, a in failing.items()})
        holder["export"], holder["agreement"] = export, agreement

    upstream = {model.base_asset: base["data_version"], model.adapter_asset: adapter["data_version"]}
    path = publish_folder(context, store=artifacts, catalog=catalog, build=build, rows=1 + len(config.quantizations),
                          upstream=upstream).path
    export, agreement = holder["export"], holder["agreement"]
    check = dg.AssetCheckResult(
        check_name=AGREEMENT_CHECK, passed=True,  # a failing export raised above, before publishing
        description="every exported file answers like the HF model",
        metadata={f"{v}_agreement": a.rate for v, a in agreement.items()}
        | {f"{v}_differing": dg.MetadataValue.json(a.differing[:3]) for v, a in agreement.items() if a.differing}
        # f16: how many prompts matched exactly, how many parted only at a near tie, and the tie's stated gap
        | {"f16_exact": agreement["f16"].same, "f16_near_ties": agreement["f16"].near_ties or 0,
           "f16_prompts": agreement["f16"].total, "f16_near_tie_logit_gap": config.f16_near_tie_logit_gap})
    return dg.MaterializeResult(
        metadata={
            **{f"{v}_agreement": a.rate for v, a in agreement.items()},
            # the check's prompts, one at a time: transformers' time over llama.cpp's
            **{f"{v}_speedup_vs_hf": round(a.reference_s / a.candidate_s, 2)
               for v, a in agreement.items() if a.candidate_s},
            **{f"{v}_size_mb": mb for v, mb in export.sizes_mb.items()},
            **{f"{step}_seconds": s for step, s in export.seconds.items()},
            "check_prompts": len(prompts),
            "modelfile": dg.MetadataValue.md(f"```\n{(path / export.modelfile).read_text()}```"),
            "ollama": f"cd {path} && ollama create {model.ollama_name} -f Modelfile",
            "path": dg.MetadataValue.path(str(path)),
        },
        check_results=[check])


def _gguf_asset(model: ServableModel, deps: list, description: str):
    @dg.asset(name=model.asset, group_name=GROUP, deps=deps, kinds={"gguf", "llama.cpp"},
              check_specs=[dg.AssetCheckSpec(AGREEMENT_CHECK, asset=model.asset,
                                             description="greedy completions of the exported files equal the HF "
                                                         "model's (f16: every prompt, or parting only where "
                                                         "transformers' top two logits are within "
                                                         "f16_near_tie_logit_gap), or agree on the configured "
                                                         "share (quantized); an export that fails is not "
                                                         "published (the materialization fails, naming the "
                                                         "prompts)")],
              description=description, op_tags=MODEL_STEP)
    def export_asset(context: dg.AssetExecutionContext, config: GgufExportConfig, artifacts: ArtifactStore,
                     catalog: DuckDBCatalog) -> dg.MaterializeResult:
        return _export(context, config, artifacts, catalog)

    return export_asset


autocomplete_stage_a_gguf = _gguf_asset(
    SERVABLE["autocomplete_stage_a_gguf"], [autocomplete_base_model, autocomplete_stage_a_adapter],
    "M1 (Stage A merged into the base) as GGUF f16 + quantized, with an Ollama Modelfile (FIM template).")
autocomplete_stage_b_gguf = _gguf_asset(
    SERVABLE["autocomplete_stage_b_gguf"], [autocomplete_base_model, autocomplete_stage_b_adapter],
    "M2 (Stage B merged into the base) as GGUF f16 + quantized, with an Ollama Modelfile (FIM template): what "
    "`astforge-serve --backend llama_cpp` and Ollama serve.")
dsl_student_gguf = _gguf_asset(
    SERVABLE["dsl_student_gguf"], [dsl_base_model, dsl_dpo_adapter],
    "The DSL student (DPO adapter merged into its base) as GGUF f16 + quantized, with an Ollama Modelfile (its "
    "chat template).")

GGUF_ASSETS = [autocomplete_stage_a_gguf, autocomplete_stage_b_gguf, dsl_student_gguf]

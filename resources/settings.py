"""Where astforge keeps its state, and the profile (demo | full) that sets default sizes.

Nothing here runs at import but plain data: the profile is read from ``ASTFORGE_PROFILE`` when a run builds its
config (assets/profile_config.py), and what depends on the machine (CUDA, the CPU's bfloat16 units) is asked then,
so a code location loads the same on a CPU webserver and on a GPU worker."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def astforge_home() -> Path:
    return Path(os.environ.get("ASTFORGE_HOME", CHECKOUT / ".astforge")).expanduser().resolve()


@dataclass(frozen=True)
class Profile:
    name: str
    max_files_per_slice: int | None  # None: the whole source
    token_cap: int
    max_unit_chars: int
    base_model: str  # hub id, local folder, or tiny:<architecture>
    phase1_steps: int
    phase2_steps: int
    batch_size: int
    max_length: int  # tokenizer tokens per training sequence
    learning_rate: float
    eval_samples: int  # sampled ASTs / held-out docstrings per metric


def _cpu_bf16_or_auto() -> str:
    """bf16 where the CPU has bfloat16 units (autocast: measured 1.4x faster SmolLM2 steps), else auto."""
    from ml.compute import cpu_has_bf16

    return "bf16" if cpu_has_bf16() else "auto"


# A profile value resolved on the machine that runs: "bf16" where the CPU has bfloat16 units, else "auto".
BF16_IF_CPU = "bf16-if-cpu"
# The full AST base: the seed's Qwen2.5-0.5B where a GPU can train it (from the hub or a mirror); on a CPU the
# packaged SmolLM2-135M, offline. Asked when a run starts, never at import.
FULL_AST_BASE, FULL_AST_BASE_CPU = "Qwen/Qwen2.5-0.5B", "smollm2-135m"
_GPU_OR_CPU_BASE = "gpu-or-cpu"


def _full_ast_base() -> str:
    import torch

    return FULL_AST_BASE if torch.cuda.is_available() else FULL_AST_BASE_CPU


PROFILES = {
    # Small enough that the whole default graph materializes on 2 CPU cores in minutes.
    "demo": Profile(
        "demo", max_files_per_slice=300, token_cap=1024, max_unit_chars=20_000, base_model="tiny:qwen2",
        phase1_steps=150, phase2_steps=150, batch_size=8, max_length=256, learning_rate=3e-3, eval_samples=16,
    ),
    # The seed's numbers: Qwen2.5-0.5B (4-bit + LoRA on CUDA), 4096-token AST cap.
    "full": Profile(
        "full", max_files_per_slice=None, token_cap=4096, max_unit_chars=100_000, base_model=_GPU_OR_CPU_BASE,
        phase1_steps=3000, phase2_steps=2000, batch_size=8, max_length=4096, learning_rate=2e-4, eval_samples=200,
    ),
}


def active_profile_name() -> str:
    name = os.environ.get("ASTFORGE_PROFILE", "demo")
    if name not in PROFILES:
        raise ValueError(f"ASTFORGE_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return name


def active_profile() -> Profile:
    profile = PROFILES[active_profile_name()]
    if profile.base_model == _GPU_OR_CPU_BASE:
        from dataclasses import replace

        profile = replace(profile, base_model=_full_ast_base())
    return profile


@dataclass(frozen=True)
class DslProfile:
    """Sizes of the `dsl` group. ``full`` carries the original project's config/defaults.json values."""

    base_model: str
    examples_per_schema: int
    per_schema_queries: int
    positives_per_schema: int
    sft_max_steps: int
    sft_batch_size: int
    sft_grad_accum: int
    sft_learning_rate: float
    sft_warmup_steps: int
    sft_eval_steps: int
    sft_save_steps: int
    max_length: int  # SFT and DPO sequence cap (tokens)
    eval_max_samples: int  # SFT validation rows (eval_loss)
    eval_samples: int  # generated requests per group (seen / held-out domains) in dsl_*_eval
    probe_samples: int  # requests generated at each SFT evaluation (semantic_pass_rate vs steps); 0 = off
    dpo_max_steps: int
    dpo_batch_size: int
    dpo_grad_accum: int
    dpo_learning_rate: float
    dpo_warmup_steps: int
    max_pairs: int
    # What the prompt shows of the schema: "json" (the whole JSON Schema, as the original) or "digest" (a few
    # lines read off it: ~3x fewer prompt tokens, see ml/dsl/format.schema_digest).
    schema_view: str = "json"
    # BPE pre-tokenization of tiny: students: "wordpunct" keeps a value one token sequence in the request and in
    # the JSON ("157" stays "157", not "value":[15 + 7,1428]}}), which the student must copy.
    bpe_split: str = "wordpunct"
    # Weight of the chosen answers' NLL next to the DPO loss (0 = plain DPO, the original). On the demo student
    # plain DPO cost 6 of 32 unconstrained schema-valid answers; weight 5 kept all but 2 (README, DSL figures).
    dpo_sft_weight: float = 0.0
    # LoRA of the SFT student: rank, alpha, and how many of the top layers it adapts (0 = all). A random-init tiny:
    # student needs a wide adapter; a pretrained base learns the task with r=16.
    sft_lora_r: int = 64
    sft_lora_alpha: int = 128
    sft_lora_top_layers: int = 0
    # SFT / DPO precision: auto (the compute resource's: fp32 on CPU) | bf16 | fp32.
    train_precision: str = "auto"


DSL_PROFILES = {
    # The packaged SmolLM2-135M-Instruct on 2 CPU cores: 7-10 s per SFT step of 8 rows (bf16 autocast, LoRA on the
    # top 20 of 30 layers; 10.8 s in fp32 on all layers) and ≈ 2 s per evaluation request. 80 steps and 12 requests
    # per group put the group at ≈ 16 min (measured 2026-12-01, the model's own LM head on CPU; fewer steps learn
    # nothing visible; the README's learning curve says what more steps give).
    "demo": DslProfile(
        base_model="smollm2-135m", examples_per_schema=20, per_schema_queries=600, positives_per_schema=500,
        sft_max_steps=80, sft_batch_size=8, sft_grad_accum=1, sft_learning_rate=1.5e-3, sft_warmup_steps=3,
        # 24 test requests per group (seen domains, held-out domains): 48 per evaluation, as the evaluation plan
        # asks. At 12 one request was 0.083 and nothing could be told from noise. The untrained base writes to its
        # length budget: dsl_base_eval took 105 s for 24 requests and 437 s for 48 on the fp32 path (2026-12-07), so
        # 48 per group would cost ≈ 15 min for the base alone, which the 40-minute demo cannot pay
        sft_eval_steps=40, sft_save_steps=40, max_length=512, eval_max_samples=16, eval_samples=24,
        # no probe during the demo's SFT (41 s of the 40-min demo): bench/dsl_learning_curve.py draws that curve
        # DPO: 4 pairs a step as 4 passes of 1 (the same pairs and mean loss): 3.0 GiB peak instead of 6.6 (2 steps
        # on the demo's pairs, fp32): 8 sequences of up to 512 tokens with their 49k-wide logits in one pass
        probe_samples=0, dpo_max_steps=6, dpo_batch_size=1, dpo_grad_accum=4, dpo_learning_rate=5e-5,
        dpo_warmup_steps=1, max_pairs=12, schema_view="digest", dpo_sft_weight=5.0,
        sft_lora_r=16, sft_lora_alpha=32, sft_lora_top_layers=20, train_precision=BF16_IF_CPU,
    ),
    # The tiny Gemma 3 student of earlier demos (tests use it): 600 steps in ~5 min, learns the format, not the task.
    "tiny": DslProfile(
        base_model="tiny:gemma3_text", examples_per_schema=20, per_schema_queries=600, positives_per_schema=500,
        sft_max_steps=600, sft_batch_size=8, sft_grad_accum=1, sft_learning_rate=3e-3, sft_warmup_steps=10,
        sft_eval_steps=100, sft_save_steps=100, max_length=1024, eval_max_samples=32, eval_samples=48,
        probe_samples=16, dpo_max_steps=20, dpo_batch_size=4, dpo_grad_accum=1, dpo_learning_rate=5e-5,
        dpo_warmup_steps=2, max_pairs=64, schema_view="digest", dpo_sft_weight=5.0,
    ),
    "full": DslProfile(
        base_model="unsloth/gemma-3-270m-it", examples_per_schema=60, per_schema_queries=60, positives_per_schema=250,
        sft_max_steps=3000, sft_batch_size=4, sft_grad_accum=4, sft_learning_rate=5e-5, sft_warmup_steps=50,
        sft_eval_steps=50, sft_save_steps=200, max_length=32768, eval_max_samples=256, eval_samples=200,
        probe_samples=0, dpo_max_steps=500, dpo_batch_size=2, dpo_grad_accum=8, dpo_learning_rate=5e-6,
        dpo_warmup_steps=50, max_pairs=2000,
    ),
}


def active_dsl_profile() -> DslProfile:
    """The `dsl` group's sizes: ASTFORGE_DSL_PROFILE (demo | tiny | full) when set, else ASTFORGE_PROFILE's."""
    name = os.environ.get("ASTFORGE_DSL_PROFILE") or active_profile_name()
    if name not in DSL_PROFILES:
        raise ValueError(f"ASTFORGE_DSL_PROFILE={name!r}: expected one of {', '.join(DSL_PROFILES)}")
    return _machine_precision(DSL_PROFILES[name])


def _machine_precision(profile):
    """``profile`` with ``train_precision`` bf16-if-cpu decided on this machine."""
    if profile.train_precision != BF16_IF_CPU:
        return profile
    from dataclasses import replace

    return replace(profile, train_precision=_cpu_bf16_or_auto())


@dataclass(frozen=True)
class AutocompleteProfile:
    """The `autocomplete` group's sizes (ASTFORGE_PROFILE's name: demo | full)."""

    name: str
    base_model: str
    domain_max_examples: int  # 0: every example of the domain source
    stage_a_steps: int
    stage_b_steps: int
    batch_size: int
    max_length: int
    learning_rate: float
    eval_tasks: int  # per set (generic, domain): a seeded sample of the test split's tasks
    train_precision: str
    humaneval_problems: int = 0  # a seeded sample of HumanEval's 164 problems, one masked line each (0: all)
    # the slices Stage A trains on (Stage B: their domain slices) and the evaluation reports; each needs its
    # fim_samples and domain_corpus (autocomplete_data_job on the slice)
    languages: tuple[str, ...] = ("python",)


AUTOCOMPLETE_PROFILES = {
    # SmolLM2-135M on 2 CPU cores: ≈ 250-token rows, bf16 autocast where the CPU has it; three models × (2 ×
    # eval_tasks + humaneval_problems) single-line completions at batch 1 (≈ 1.2 s each with the sandboxed tests:
    # 40 HumanEval problems instead of the first 24 add ≈ 1 min to the group's ≈ 10).
    # Measured (docs/benchmarks.md): 60 Stage A steps at 2e-3 lift generic exact match from 0/24 to 1/24 and edit
    # similarity from ≈ 0.14 to ≈ 0.32; 40 steps at 1e-3 gave 0/16.
    "demo": AutocompleteProfile("demo", "smollm2-135m", domain_max_examples=4000, stage_a_steps=60, stage_b_steps=20,
                                batch_size=8, max_length=320, learning_rate=2e-3, eval_tasks=24,
                                train_precision=BF16_IF_CPU, humaneval_problems=40),
    "full": AutocompleteProfile("full", "Qwen/Qwen2.5-Coder-0.5B", domain_max_examples=0, stage_a_steps=2000,
                                stage_b_steps=600, batch_size=16, max_length=1024, learning_rate=2e-4,
                                eval_tasks=164, train_precision="auto", humaneval_problems=0,
                                languages=("python", "javascript", "java")),
}


def active_autocomplete_profile() -> AutocompleteProfile:
    return _machine_precision(AUTOCOMPLETE_PROFILES[active_profile_name()])


@dataclass(frozen=True)
class SrlProfile:
    """The `srl` group's sizes (ASTFORGE_PROFILE's name: demo | full)."""

    base_model: str
    max_tasks_per_family: int
    max_code_chars: int
    warmup_steps: int  # supervised steps on the teacher's traces before GRPO (0: GRPO from the base)
    grpo_steps: int
    num_generations: int
    eval_tasks: int  # test tasks per policy (srl_eval)
    train_precision: str


SRL_PROFILES = {
    # SmolLM2-135M on 2 CPU cores; short units keep prompts near 250 tokens.
    # 24 warm-up steps of 8 rows: held-out parse 0.846, execution 0.154 (20 steps of 6 rows: 0.692, 0.000); GRPO
    # steps cost ≈ 20 s each here, the demo only shows the mechanism (bench/srl_learning_curve.py for more).
    # 20 tasks per family: the python slice's test families then hold 42 tasks (train 68, dev 6), all evaluated
    # (the issue asks for at least 40 per evaluation; 16 before): with the warm-up-only pass ≈ +4 min on 2 cores.
    "demo": SrlProfile("smollm2-135m", max_tasks_per_family=20, max_code_chars=500, warmup_steps=24, grpo_steps=2,
                       num_generations=4, eval_tasks=42, train_precision=BF16_IF_CPU),
    "full": SrlProfile("Qwen/Qwen2.5-Coder-0.5B", max_tasks_per_family=200, max_code_chars=2000, warmup_steps=300,
                       grpo_steps=500, num_generations=8, eval_tasks=200, train_precision="auto"),
}


def active_srl_profile() -> SrlProfile:
    return _machine_precision(SRL_PROFILES[active_profile_name()])


@dataclass(frozen=True)
class GraphRepairProfile:
    """The `graph_repair` group's sizes (ASTFORGE_PROFILE's name: demo | full)."""

    max_functions: int  # graphs per slice (0: all)
    max_nodes: int  # larger functions are skipped (the Transformer's sequence is up to twice this)
    corruptions_per_graph: int  # training rows per held-in function
    hidden: int
    steps: int  # the same for both models
    batch_size: int


GRAPH_REPAIR_PROFILES = {
    # ~1M-parameter models on 2 CPU cores (bench/graph_repair.py for the 5M run); the test split is ~20% of the
    # functions (~240, each at 3 noise levels), dev ~10% for the threshold sweep: evaluation ≈ 2.5 min on 2 cores
    "demo": GraphRepairProfile(max_functions=1200, max_nodes=60, corruptions_per_graph=4, hidden=128, steps=300,
                               batch_size=16),
    # ~5M parameters (hidden 256, vocabulary ~4000): the comparison; bench/graph_repair.py runs it
    "full": GraphRepairProfile(max_functions=20000, max_nodes=200, corruptions_per_graph=4, hidden=256, steps=3000,
                               batch_size=32),
}


def active_graph_repair_profile() -> GraphRepairProfile:
    return GRAPH_REPAIR_PROFILES[active_profile_name()]


_SECTIONS = {"ast": active_profile, "dsl": active_dsl_profile, "autocomplete": active_autocomplete_profile,
             "srl": active_srl_profile, "graph_repair": active_graph_repair_profile}


def profile_value(section: str, attr: str):
    """``attr`` of the active profile of ``section`` (ast | dsl | autocomplete | srl | graph_repair), read now."""
    return getattr(_SECTIONS[section](), attr)

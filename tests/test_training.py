"""ml.training: AST tokenizer, tiny base model, TRL Phase 1 / Phase 2 training, batching, adapters."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from ml.codec.python_ast import structural_vocabulary
from ml.compute import ComputePlan, resolve_compute
from ml.models.loading import load_adapter
from ml.training import (
    PhaseConfig,
    assert_disjoint,
    ast_id_range,
    build_ast_tokenizer,
    build_base_model,
    save_base_model,
    train_phase1,
    train_phase2,
)
from ml.training.batching import (
    LengthGroupedSampler,
    length_grouped_batches,
    random_batches,
    real_token_fraction,
)
from ml.training.lora_sft import prompt_completion_rows
from ml.training.sft import build_phase1_trainer, build_phase2_trainer

# The real compact-codec vocabulary; the synthetic texts below use a few of its tokens.
AST_VOCAB = structural_vocabulary()


def synth_ast(rng: random.Random) -> str:
    body = "".join(
        f"<Assign>var_{rng.randint(0, 4)}<BinOp>var_{rng.randint(0, 4)}<op:{rng.choice(['Add', 'Mult'])}>"
        f"var_{rng.randint(0, 4)}<close>"
        for _ in range(rng.randint(1, 3))
    )
    return f"<FunctionDef>var_0<arguments><arg>var_1<close><end><close><indent>{body}<Return>var_1<dedent>"


DOCS = ["Add two numbers.", "Multiply the values.", "Return the sum of x.", "Compute a product."]


def synth_pairs(n: int, seed: int = 1) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(rng.choice(DOCS), synth_ast(rng)) for _ in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models run as fast on one thread, and one thread does not stall when other processes
    share the CPU (two spinning OpenMP threads on a busy 2-core machine slow training ~20x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rng = random.Random(0)
    return [synth_ast(rng) for _ in range(64)]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return build_ast_tokenizer("tiny:qwen2", corpus + DOCS * 4, AST_VOCAB, vocab_size=320)


@pytest.fixture(scope="module")
def cpu_plan() -> ComputePlan:
    return resolve_compute(device="cpu")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    save_base_model(build_base_model("tiny:qwen2", tokenizer, seed=0), tokenizer, folder)
    return folder


def fast_cfg(**kw) -> PhaseConfig:
    base = {
        "max_steps": 24,
        "learning_rate": 3e-3,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "warmup_steps": 2,
        "logging_steps": 4,
        "eval_steps": 12,
        "save_steps": 12,
        "save_total_limit": 2,
        "max_length": 256,
        "lora_r": 8,
        "lora_alpha": 16,
    }
    base.update(kw)
    return PhaseConfig(**base)


@pytest.fixture(scope="module")
def phase1(tmp_path_factory, tokenizer, base_dir, corpus, cpu_plan):
    root = tmp_path_factory.mktemp("p1")
    logs: list[tuple[int, dict]] = []
    result = train_phase1(
        base_dir,
        tokenizer,
        corpus[:52],
        corpus[52:],
        root / "adapter",
        root / "work",
        fast_cfg(),
        cpu_plan,
        on_log=lambda step, d: logs.append((step, d)),
    )
    return result, logs


# ----------------------------------------------------------------------------- compute


def test_resolve_compute_cpu():
    plan = resolve_compute()
    if not torch.cuda.is_available():
        assert plan == ComputePlan(device="cpu", dtype="fp32", quantize_4bit=False, backend="hf")
        with pytest.raises(ValueError, match="4bit"):
            resolve_compute(quantization="4bit")
        with pytest.raises(ValueError, match="cuda"):
            resolve_compute(device="cuda")
    with pytest.raises(ValueError, match="unknown"):
        resolve_compute(precision="int3")


def test_backend_resolves_to_hf_and_unsloth_is_refused_on_cpu():
    """auto never picks unsloth; on a CPU it is refused (tests/test_unsloth_backend.py: the CUDA side)."""
    assert resolve_compute().backend == "hf"
    assert resolve_compute(device="cpu", backend="auto").backend == "hf"
    assert resolve_compute(device="cpu", backend="transformers").backend == "hf"
    with pytest.raises(ValueError, match=r"backend 'unsloth' requires CUDA"):
        resolve_compute(device="cpu", backend="unsloth")


# ----------------------------------------------------------------------------- tokenizer


def test_ast_ids_disjoint_from_base(tokenizer):
    lo, hi = ast_id_range(tokenizer, AST_VOCAB)
    base = tokenizer.init_kwargs["astforge_base_vocab_size"]
    assert lo == base and hi == len(tokenizer) - 1 and hi - lo + 1 == len(AST_VOCAB)
    assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
    assert tokenizer.eos_token_id < base and tokenizer.pad_token_id < base
    assert_disjoint(tokenizer, AST_VOCAB)
    ids = tokenizer("<FunctionDef>var_0<close>", add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<FunctionDef>") and ids[
        -1
    ] == tokenizer.convert_tokens_to_ids("<close>")


def test_disjoint_checker_catches_overlap(tokenizer):
    vocab = tokenizer.get_vocab()
    base_token = next(t for t, i in vocab.items() if i == 5)  # a BPE piece of the base vocabulary
    with pytest.raises(ValueError, match="overlap"):
        assert_disjoint(tokenizer, [*AST_VOCAB, base_token])
    with pytest.raises(ValueError, match="exactly one id"):
        assert_disjoint(tokenizer, [*AST_VOCAB, "<NotAdded>"])


def test_tokenizer_reload(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    text = "<FunctionDef>var_0<arguments><arg>var_1<close><end><close><indent><Return>var_1<dedent>"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert ast_id_range(again, AST_VOCAB) == ast_id_range(tokenizer, AST_VOCAB)
    assert_disjoint(again, AST_VOCAB)
    assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text


JSON_LINE = '{"op": "filter", "field": "user_name", "value": [1, 2.5, "a b"], "nested": {"x": null}}'
CODE = "def f(x_1, *args):\n    return {k: v for k, v in x_1.items() if v != '  '}\n"


@pytest.mark.parametrize("split", ["words", "wordpunct"])
def test_a_tiny_tokenizer_reloads_from_its_model_folder_as_it_was_trained(split, corpus, tmp_path):
    """transformers 5 reloads a folder whose config.json says qwen2 as Qwen2Tokenizer, which rebuilds Qwen's
    pre-tokenizer over the trained one; the platform's loaders give back the tokenizer as trained."""
    from ml.models.loading import load_for_generation, load_tokenizer

    texts = corpus + DOCS * 4 + [JSON_LINE, CODE] * 8
    trained = build_ast_tokenizer("tiny:qwen2", texts, AST_VOCAB, vocab_size=400, split=split)
    folder = save_base_model(build_base_model("tiny:qwen2", trained, seed=0), trained, tmp_path / "base")
    _, served = load_for_generation(folder)  # what the completion server, the GGUF export and the evals load
    for again in (served, load_tokenizer(folder)):
        for text in (JSON_LINE, CODE, DOCS[0], "<FunctionDef>var_0<close>  \n\t x"):
            assert again(text)["input_ids"] == trained(text)["input_ids"], (type(again).__name__, text)
        assert (again.eos_token, again.pad_token, len(again)) == (trained.eos_token, trained.pad_token, len(trained))


# ----------------------------------------------------------------------------- base model


@pytest.mark.parametrize("arch", ["qwen2", "gemma3_text"])
def test_tiny_model_forward_and_reload(arch, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = build_base_model(f"tiny:{arch}", tokenizer, seed=0)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    ids = torch.tensor([tokenizer("<FunctionDef>var_0<close>")["input_ids"]])
    out = model(input_ids=ids, labels=ids)
    assert out.logits.shape == (1, ids.shape[1], len(tokenizer)) and torch.isfinite(out.loss)
    save_base_model(model, tokenizer, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").is_file()
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert torch.allclose(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    same = build_base_model(f"tiny:{arch}", tokenizer, seed=0)
    assert torch.equal(same.get_input_embeddings().weight, model.get_input_embeddings().weight)


def test_resize_mean_init(tokenizer, tmp_path):
    from ml.training.base_model import resize_with_mean_init

    model = build_base_model("tiny:qwen2", tokenizer, seed=0)
    old = model.get_input_embeddings().weight.detach().clone()
    resize_with_mean_init(model, len(tokenizer) + 3)
    new = model.get_input_embeddings().weight
    assert new.shape[0] == len(tokenizer) + 3
    assert torch.allclose(new[-1], old.mean(0), atol=1e-6)
    # a pretrained matrix with padding rows past the tokenizer: the AST rows are re-initialised too
    model = build_base_model("tiny:qwen2", tokenizer, seed=0)
    base = tokenizer.init_kwargs["astforge_base_vocab_size"]
    resize_with_mean_init(model, len(tokenizer), first_new_row=base)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(tokenizer) and torch.allclose(emb[base], old[:base].mean(0), atol=1e-6)


def test_new_rows_start_at_the_tokens_their_names_spell(tokenizer):
    from ml.training.base_model import init_rows_from_names, token_name

    assert token_name("<FunctionDef>") == "FunctionDef" and token_name("<const:True>") == "const True"
    assert token_name("<|fim_prefix|>") == "fim prefix"
    model = build_base_model("tiny:qwen2", tokenizer, seed=0)
    base = tokenizer.init_kwargs["astforge_base_vocab_size"]
    before = model.get_input_embeddings().weight.detach().clone()
    set_rows = init_rows_from_names(model, tokenizer, base)
    emb = model.get_input_embeddings().weight
    assert 0 < set_rows <= len(tokenizer) - base
    assert torch.equal(emb[:base], before[:base])  # the base's own rows are untouched
    spelled = {}
    for token_id in range(base, len(tokenizer)):
        ids = [i for i in tokenizer(token_name(tokenizer.convert_ids_to_tokens(token_id)),
                                    add_special_tokens=False)["input_ids"] if i < base]
        if ids:
            assert torch.allclose(emb[token_id], before[ids].mean(0), atol=1e-6)
            spelled[token_id] = tuple(ids)
    # tokens with different spellings now start apart (a mean init gives them all one vector)
    distinct = {ids: tid for tid, ids in spelled.items()}
    a, b = list(distinct.values())[:2]
    assert not torch.allclose(emb[a], emb[b])
    with pytest.raises(ValueError, match="new_rows"):
        build_base_model("tiny:qwen2", tokenizer, new_rows="zeros")


# ----------------------------------------------------------------------------- batching


def test_length_grouped_batching():
    rng = random.Random(0)
    lengths = [rng.choice([rng.randint(10, 40), rng.randint(200, 900)]) for _ in range(1003)]
    grouped = length_grouped_batches(lengths, 16, mega_batch_mult=64, seed=0)
    flat = [i for b in grouped for i in b]
    assert sorted(flat) == list(range(1003))
    assert all(len(b) == 16 for b in grouped[:-1]) and len(grouped[-1]) == 1003 % 16
    naive = random_batches(lengths, 16, seed=0)
    assert real_token_fraction(grouped, lengths) >= 0.9 > real_token_fraction(naive, lengths)
    sampler = LengthGroupedSampler(lengths, 16, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == sorted(sampler) and first != list(sampler)
    assert real_token_fraction([[3, 3], [1, 4]]) == pytest.approx(11 / 14)


# ----------------------------------------------------------------------------- phase 1


def test_phase1_lowers_eval_loss_and_adapter_loads(phase1, base_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, logs = phase1
    assert result.steps == 24 and result.resumed_from is None
    assert result.eval_loss_final < result.eval_loss_initial - 0.5, result
    metrics = {m for _, m, _ in result.curve}
    assert {"loss", "eval_loss", "learning_rate", "grad_norm"} <= metrics
    assert any("loss" in d for _, d in logs) and result.tokens_per_s > 0
    cfg = json.loads(Path(result.out_dir, "adapter_config.json").read_text())
    assert set(cfg["target_modules"]) >= {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    lo, hi = ast_id_range(tokenizer, AST_VOCAB)
    assert cfg["trainable_token_indices"]["embed_tokens"] == list(range(lo, hi + 1))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), result.out_dir)
    model.eval()
    ids = torch.tensor([tokenizer("<FunctionDef>var_0<arguments>")["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        with model.disable_adapter():
            plain = model(input_ids=ids).logits
    assert not torch.allclose(tuned, plain)
    # the AST rows moved, the tied lm_head sees the same rows, the base rows did not move
    merged = model.merge_and_unload()
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    emb, emb0 = merged.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert torch.equal(emb[:lo], emb0[:lo]) and not torch.allclose(emb[lo:], emb0[lo:])


def test_phase1_resumes_from_checkpoint(tmp_path, tokenizer, base_dir, corpus, cpu_plan):
    work, out = tmp_path / "work", tmp_path / "adapter"
    cfg = fast_cfg(max_steps=6, save_steps=2, eval_steps=2, logging_steps=2)
    first = train_phase1(base_dir, tokenizer, corpus[:32], corpus[52:56], out, work, cfg, cpu_plan)
    assert first.steps == 6 and first.resumed_from is None
    shutil.rmtree(work / "checkpoint-6")  # as if the run had been stopped after step 4
    second = train_phase1(base_dir, tokenizer, corpus[:32], corpus[52:56], out, work, cfg, cpu_plan)
    assert second.resumed_from is not None and second.resumed_from.endswith("checkpoint-4")
    assert second.steps == 6
    steps = [s for s, m, _ in second.curve if m == "loss"]
    assert steps == [2, 4, 6]  # the history of the first call, then the continuation
    assert second.eval_loss_initial == pytest.approx(first.eval_loss_initial)


def test_a_resume_with_another_max_steps_is_refused_where_the_schedule_depends_on_it(tmp_path, tokenizer, base_dir,
                                                                                     corpus, cpu_plan):
    """Trainer rebuilds the schedule for the new max_steps: a cosine that reached 0 at step 2 would jump back to
    half the peak. A constant schedule continues exactly, so a longer run resumes it."""
    for schedule, warmup in (("cosine", 0), ("constant_with_warmup", 1)):
        work, out = tmp_path / schedule / "work", tmp_path / schedule / "adapter"
        cfg = fast_cfg(max_steps=2, save_steps=1, eval_steps=1, logging_steps=1, warmup_steps=warmup,
                       lr_scheduler_type=schedule)
        first = train_phase1(base_dir, tokenizer, corpus[:16], corpus[52:54], out, work, cfg, cpu_plan)
        assert first.steps == 2 and (work / "checkpoint-2").is_dir()
        cfg.max_steps = 4
        if schedule == "cosine":
            with pytest.raises(ValueError, match=r"max_steps=2 \(2 steps done\) with the cosine .*max_steps=4 .*"
                                                  r"Set max_steps back to 2 .*delete .*work"):
                train_phase1(base_dir, tokenizer, corpus[:16], corpus[52:54], out, work, cfg, cpu_plan)
            assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]  # no step
        else:
            second = train_phase1(base_dir, tokenizer, corpus[:16], corpus[52:54], out, work, cfg, cpu_plan)
            assert second.resumed_from.endswith("checkpoint-2") and second.steps == 4


def _early_stopping(trainer):
    from transformers import EarlyStoppingCallback

    return [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, EarlyStoppingCallback)]


def test_phase1_early_stopping_patience_is_wired(tmp_path, tokenizer, base_dir, corpus, cpu_plan):
    cfg = fast_cfg(early_stopping_patience=3, early_stopping_threshold=0.01)
    trainer = build_phase1_trainer(base_dir, tokenizer, corpus[:8], corpus[52:56], tmp_path / "w", cfg, cpu_plan)
    (cb,) = _early_stopping(trainer)
    assert cb.early_stopping_patience == 3 and cb.early_stopping_threshold == 0.01
    assert trainer.args.load_best_model_at_end and trainer.args.metric_for_best_model == "eval_loss"
    # without an eval set there is nothing to stop on
    no_eval = build_phase1_trainer(base_dir, tokenizer, corpus[:8], [], tmp_path / "w2", cfg, cpu_plan)
    assert not _early_stopping(no_eval) and not no_eval.args.load_best_model_at_end


# ----------------------------------------------------------------------------- phase 2


def test_phase2_masks_prompt(tmp_path, phase1, base_dir, tokenizer, cpu_plan):
    result, _ = phase1
    pairs = synth_pairs(12)
    trainer, dropped = build_phase2_trainer(
        base_dir, result.out_dir, tokenizer, pairs, pairs[:4], tmp_path / "w", fast_cfg(), cpu_plan
    )
    assert dropped == 0
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    for row, (nl, ast_text) in enumerate(pairs[:4]):
        n_prompt = len(tokenizer(nl + "\n", add_special_tokens=False)["input_ids"])
        n_total = len(
            tokenizer(nl + "\n" + ast_text + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        )
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        assert (labels[:n_prompt] == -100).all()
        assert torch.equal(labels[n_prompt:n_total], ids[n_prompt:n_total])
        assert (labels[n_total:] == -100).all()  # padding
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # AST rows and base frozen
    assert not _early_stopping(trainer)  # patience 0: off


def test_phase2_early_stopping_patience_is_wired(tmp_path, phase1, base_dir, tokenizer, cpu_plan):
    result, _ = phase1
    pairs = synth_pairs(8)
    cfg = fast_cfg(early_stopping_patience=2)
    trainer, _ = build_phase2_trainer(
        base_dir, result.out_dir, tokenizer, pairs, pairs[:4], tmp_path / "w", cfg, cpu_plan
    )
    (cb,) = _early_stopping(trainer)
    assert cb.early_stopping_patience == 2 and trainer.args.load_best_model_at_end


def test_truncation_drop_count(tokenizer):
    pairs = synth_pairs(10)
    long = [("A very long docstring " * 40, pairs[0][1])]
    rows, supervised, dropped = prompt_completion_rows(tokenizer, pairs + long, fast_cfg(max_length=64))
    assert dropped == 1 + sum(
        len(tokenizer(nl + "\n" + a + tokenizer.eos_token, add_special_tokens=False)["input_ids"]) > 64
        for nl, a in pairs
    )
    assert len(rows) == 11 - dropped and all(s > 0 for s in supervised)
    assert all(r["completion"].endswith(tokenizer.eos_token) for r in rows)


def test_zero_supervised_batches_raise(tokenizer, base_dir, cpu_plan, tmp_path):
    pairs = [("Add two numbers.", "")] * 4 + synth_pairs(4)
    with pytest.raises(ValueError, match=r"1 of 2 batches .* zero supervised"):
        build_phase2_trainer(
            base_dir,
            tmp_path / "unused",
            tokenizer,
            pairs,
            [],
            tmp_path / "w",
            fast_cfg(per_device_train_batch_size=4, add_eos=False),
            cpu_plan,
        )
    with pytest.raises(ValueError, match="no examples left"):
        build_phase2_trainer(
            base_dir,
            tmp_path / "unused",
            tokenizer,
            synth_pairs(4),
            [("doc " * 300, "<Return>")],
            tmp_path / "w",
            fast_cfg(max_length=32),
            cpu_plan,
        )


def test_phase2_trains_and_reports(tmp_path, phase1, base_dir, tokenizer, cpu_plan):
    result, _ = phase1
    pairs = synth_pairs(40) + [("doc " * 300, "<Return>var_1")]
    cfg = fast_cfg(max_steps=12, eval_steps=6, save_steps=6)
    r2 = train_phase2(
        base_dir,
        result.out_dir,
        tokenizer,
        pairs,
        synth_pairs(8, seed=7),
        tmp_path / "p2",
        tmp_path / "w2",
        cfg,
        cpu_plan,
    )
    assert r2.dropped_truncated == 1 and r2.steps == 12
    assert r2.eval_loss_final < r2.eval_loss_initial
    model = load_adapter(base_dir, r2.out_dir)
    assert type(model).__name__.startswith("PeftModel")


# ----------------------------------------------------------------------------- adapter loading


def test_load_adapter_errors(tmp_path, phase1, base_dir, tokenizer, corpus):
    result, _ = phase1
    with pytest.raises(ValueError, match="does not exist"):
        load_adapter(base_dir, tmp_path / "nope")
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(f"{result.out_dir}/adapter_config.json", partial)
    with pytest.raises(ValueError, match="incomplete"):
        load_adapter(base_dir, partial)
    # another base: fewer AST tokens → other vocabulary size
    small_tok = build_ast_tokenizer("tiny:qwen2", corpus, AST_VOCAB[:5], vocab_size=320)
    other = tmp_path / "other_base"
    save_base_model(build_base_model("tiny:qwen2", small_tok), small_tok, other)
    with pytest.raises(ValueError, match="does not match"):
        load_adapter(other, result.out_dir)
    # same vocabulary, wider model → shape mismatch (no tokenizer in the adapter folder to compare)
    from ml.training import base_model as bm

    wide_cfg = dict(bm.TINY_CONFIGS["qwen2"], hidden_size=192, intermediate_size=256)
    wide = tmp_path / "wide"
    old = bm.TINY_CONFIGS["qwen2"]
    bm.TINY_CONFIGS["qwen2"] = wide_cfg
    try:
        save_base_model(build_base_model("tiny:qwen2", tokenizer), tokenizer, wide)
    finally:
        bm.TINY_CONFIGS["qwen2"] = old
    with pytest.raises(ValueError, match="does not match|shape"):
        load_adapter(wide, result.out_dir)
    assert load_adapter(base_dir, result.out_dir) is not None


def test_plot_curves():
    from ml.training import plot_curves

    png = plot_curves(
        [
            (0, "eval_loss", 5.0),
            (4, "loss", 4.0),
            (8, "loss", 3.0),
            (8, "eval_loss", 3.5),
            (8, "learning_rate", 1e-3),
        ]
    )
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert plot_curves([])[:4] == b"\x89PNG"


def test_pretrained_folder_tokenizer_path(tmp_path, corpus):
    """A non-tiny base goes through AutoTokenizer.from_pretrained (a local folder here, no hub)."""
    from transformers import PreTrainedTokenizerFast

    from ml.tokenizer import train_bpe

    plain = PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus, vocab_size=300), eos_token="<|endoftext|>"
    )
    plain.save_pretrained(tmp_path / "plain")
    tok = build_ast_tokenizer(str(tmp_path / "plain"), [], AST_VOCAB)
    assert tok.pad_token == tok.eos_token  # no pad token in the base: eos is used
    assert ast_id_range(tok, AST_VOCAB) == (len(plain), len(plain) + len(AST_VOCAB) - 1)
    assert_disjoint(tok, AST_VOCAB)


def test_the_models_own_head_gives_the_fused_heads_loss_with_trainable_token_rows(tmp_path, cpu_plan):
    """``fused_lm_head=False`` (the CPU default: faster there) gives the same loss as TRL's fused head, also when the
    head carries PEFT trainable rows: the fused head reads ``lm_head.weight``, which PEFT's wrapper returns with the
    trained rows in it."""
    from ml.srl.recipe import srl_tokenizer
    from ml.srl.trace import SPECIAL_TOKENS
    from ml.training.base_model import build_base_model, save_base_model
    from ml.training.lora_sft import build_lora_sft_trainer

    texts = ["<think>why</think><action>{}</action><state_update>{}</state_update> rewrite the code"] * 20
    tok = srl_tokenizer("tiny:qwen2", texts, 300)
    save_base_model(build_base_model("tiny:qwen2", tok), tok, tmp_path / "base")
    pairs = [("rewrite: x", texts[0])] * 4
    tag = tok.convert_tokens_to_ids(SPECIAL_TOKENS[0])
    losses = {}
    for fused in (True, False):
        cfg = fast_cfg(trainable_embeddings="added", fused_lm_head=fused, separator="", add_eos=False)
        trainer, _ = build_lora_sft_trainer(tmp_path / "base", tok, pairs, [], tmp_path / f"w{fused}", cfg, cpu_plan)
        model = trainer.model
        with torch.no_grad():  # the rows as training leaves them: away from their mean init
            next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n).add_(0.5)
        head = model.get_output_embeddings()
        hidden = torch.randn(1, head.weight.shape[1])
        assert torch.allclose(head(hidden)[0, tag], (hidden @ head.weight.T)[0, tag], atol=1e-5)
        batch = next(iter(trainer.get_train_dataloader()))
        model.train()
        losses[fused] = float(trainer.compute_loss(model, batch))
        if not fused:
            keys = ("input_ids", "attention_mask", "labels")
            assert losses[fused] == pytest.approx(float(model(**{k: batch[k] for k in keys if k in batch}).loss))
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


@pytest.mark.parametrize("arch,overrides", [("qwen2", {}), ("gemma3_text", {"final_logit_softcapping": 5.0})])
def test_logits_where_the_loss_is_give_the_full_heads_loss_and_gradients(arch, overrides, tokenizer):
    """ml.training.completion_loss: the LM head on supervised positions only gives the loss and the LoRA gradients of
    the model's own full-logits loss (right padding, prompts masked, a soft-capped head, with and without the
    Trainer's token count)."""
    from peft import LoraConfig, get_peft_model

    from ml.training.base_model import tiny_model
    from ml.training.completion_loss import completion_only_loss, supports_completion_loss

    model = get_peft_model(tiny_model(arch, tokenizer, seed=3, **overrides),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():  # LoRA B starts at zero: move it so that its gradient path is exercised
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    assert supports_completion_loss(model)
    rng = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tokenizer), (3, 12), generator=rng)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0  # right padding
    mask[2, 6:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    labels[:, :4] = -100  # prompt
    labels[0, :7] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    model.train()
    for count in (None, torch.tensor(int((labels[:, 1:] != -100).sum()) + 3)):
        grads = []
        for path in ("full", "supervised"):
            model.zero_grad()
            loss = (model(**batch, num_items_in_batch=count).loss if path == "full"
                    else completion_only_loss(model, batch, count))
            loss.backward()
            grads.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
        (full, g_full), (mine, g_mine) = grads
        assert mine == pytest.approx(full, rel=1e-5)
        assert g_full.keys() == g_mine.keys() and g_full
        for n in g_full:
            assert torch.allclose(g_full[n], g_mine[n], atol=1e-6, rtol=1e-4), n


def test_sft_training_step_applies_the_head_to_supervised_tokens_only(tmp_path, tokenizer, base_dir, cpu_plan):
    """The SFT trainer's training loss (CPU, the model's own head) runs the LM head on the completion tokens only,
    with the loss the full head gives; evaluation keeps the full path."""
    from ml.training.lora_sft import build_lora_sft_trainer

    pairs = synth_pairs(8)
    cfg = fast_cfg(separator="\n", add_eos=True, trainable_embeddings="none")
    trainer, _ = build_lora_sft_trainer(base_dir, tokenizer, pairs, [], tmp_path / "w", cfg, cpu_plan)
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    model.train()
    loss = float(trainer.compute_loss(model, batch))
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(supervised, model.config.hidden_size)]
    seen.clear()
    keys = ("input_ids", "attention_mask", "labels")
    assert loss == pytest.approx(float(model(**{k: batch[k] for k in keys}).loss), rel=1e-5)
    assert seen == [tuple(batch["input_ids"].shape) + (model.config.hidden_size,)]
    handle.remove()


def test_sft_step_flops_counts_the_backward_down_to_the_lowest_adapted_layer_only(tokenizer):
    """ml.training.flops on tiny qwen2 (2 layers, LoRA on layer 1's q/v): layer 0 has a forward and no backward, the
    frozen weights no weight gradient, the LM head only the rows it is applied to."""
    from peft import LoraConfig, get_peft_model

    from ml.training.base_model import tiny_model
    from ml.training.flops import lowest_trained_layer, sft_step_flops

    model = get_peft_model(tiny_model("qwen2", tokenizer), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                      layers_to_transform=[1]))
    assert lowest_trained_layer(model) == 1
    tokens, length, rows, vocab = 2 * 10, 10, 5, len(tokenizer)
    base = 128 * 128 * 2 + 128 * 64 * 2 + 128 * 384 * 3  # q o, k v, gate up down (in x out)
    lora = (128 * 4 + 4 * 128) + (128 * 4 + 4 * 64)  # q's A B, v's A B
    attention = 4 * length * 4 * 32 * tokens  # scores and weighted sum, 4 heads of 32
    forward = 2 * tokens * (2 * base + lora) + 2 * attention + 2 * 128 * vocab * rows
    backward = 2 * tokens * base + 2 * 2 * tokens * lora + 2 * attention + 2 * 128 * vocab * rows
    got = sft_step_flops(model, batch_size=2, seq_len=length, head_rows=rows)
    assert got == {"forward": forward, "backward": backward, "total": forward + backward}


def test_micro_batches_on_a_cpu_make_the_same_optimizer_steps(tmp_path, tokenizer, base_dir, cpu_plan):
    """``cpu_micro_batch_size``: the batch of 8 runs as 4 passes of 2 rows, and the optimizer steps see the same rows
    with the same token-averaged loss, so the adapter comes out as one pass over the whole batch makes it (up to float
    summation order). On a GPU the batch stays whole."""
    from safetensors.torch import load_file

    from ml.training.lora_sft import train_lora_sft
    from ml.training.sft_trainer import micro_batching

    cfg = fast_cfg(max_steps=3, warmup_steps=0, eval_steps=100, save_steps=100, separator="\n", add_eos=True,
                   trainable_embeddings="none", cpu_micro_batch_size=2)
    assert micro_batching(cfg, cpu_plan) == (2, 4)
    assert micro_batching(replace(cfg, cpu_micro_batch_size=3), cpu_plan) == (8, 1)  # does not divide: whole
    assert micro_batching(cfg, replace(cpu_plan, device="cuda")) == (8, 1)
    pairs = synth_pairs(48, seed=4)
    weights = {}
    for micro in (0, 2):
        out = tmp_path / f"m{micro}"
        result = train_lora_sft(base_dir, tokenizer, pairs, [], out, tmp_path / f"w{micro}",
                                replace(cfg, cpu_micro_batch_size=micro), cpu_plan)
        assert result.steps == 3
        weights[micro] = load_file(str(out / "adapter_model.safetensors"))
    assert weights[0].keys() == weights[2].keys()
    moved = 0
    for name, whole in weights[0].items():
        assert torch.allclose(whole, weights[2][name], atol=1e-5, rtol=1e-4), name
        moved += int("lora_B" in name and bool(whole.abs().sum() > 0))
    assert moved  # the steps changed the adapter: the comparison is not between two untouched inits

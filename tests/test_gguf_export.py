"""GGUF export (ml/models/gguf_export.py): a tiny model with a LoRA adapter merged, converted by llama.cpp's own
converter, quantized by llama.cpp, with an Ollama Modelfile; the f16 export answers like the Hugging Face model."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from gguf import GGUFReader

from ml.autocomplete.fim import FIM_TOKENS
from ml.autocomplete.recipe import fim_tokenizer
from ml.models.gguf_convert import known_pre_tokenizer
from ml.models.gguf_export import (
    Answers,
    GgufExport,
    compare_answers,
    convert_to_gguf,
    export_gguf,
    greedy_agreement,
    greedy_answers,
)
from ml.serving.completion_backend import HFCompletionBackend
from ml.serving.completion_jobs import build_completion_prompt
from ml.serving.fim_probes import stdlib_fim_cases
from ml.serving.llama_cpp_backend import LlamaCppCompletionBackend
from ml.training import base_model
from ml.training.base_model import save_base_model

FIXTURES = Path(__file__).parent / "fixtures" / "python"
PLAIN_PROMPTS = ["def f(x):\n    return x + 1\n", "import os\n\n", "class Point:\n    def __init__(self, x):\n"]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [p.read_text(errors="ignore") for p in sorted(FIXTURES.rglob("*.py"))] * 3


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, corpus) -> Path:
    tok = fim_tokenizer("tiny:qwen2", corpus, vocab_size=400)
    # the wider init of the server tests: at 0.02 a random tied model repeats one token and every text is alike
    model = base_model.tiny_model("qwen2", tok, seed=0, initializer_range=0.2)
    return save_base_model(model, tok, tmp_path_factory.mktemp("gguf") / "base")


@pytest.fixture(scope="module")
def adapter_dir(model_dir, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)  # init_lora_weights=False: a random B, so the adapter changes the output
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                                LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    out = tmp_path_factory.mktemp("gguf") / "adapter"
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def export(model_dir, adapter_dir, tmp_path_factory) -> GgufExport:
    return export_gguf(model_dir, adapter_dir, tmp_path_factory.mktemp("gguf") / "export", quantizations=("q8_0",),
                       name="astforge-test")


@pytest.fixture(scope="module")
def prompts() -> list[tuple[str, str | None]]:
    return [(c["prompt"], c["suffix"]) for c in stdlib_fim_cases(4)] + [(p, None) for p in PLAIN_PROMPTS]


def _field(reader: GGUFReader, key: str):
    return reader.fields[key].contents()


def test_the_export_holds_f16_q8_0_a_modelfile_and_its_record(export, model_dir):
    from transformers import AutoTokenizer

    assert sorted(export.files) == ["f16", "q8_0"]
    record = GgufExport.load(export.folder)
    assert record.files == export.files and record.folder == export.folder and record.stops == export.stops
    assert record.seconds == {} and export.seconds["convert_f16"] > 0  # timings stay out of the content version
    assert str(export.folder) not in (export.folder / "gguf_export.json").read_text()
    tok = AutoTokenizer.from_pretrained(model_dir)
    for variant, file_type in (("f16", 1), ("q8_0", 7)):  # llama_ftype: MOSTLY_F16, MOSTLY_Q8_0
        reader = GGUFReader(export.path(variant))
        assert _field(reader, "general.file_type") == file_type
        assert _field(reader, "general.architecture") == "qwen2"
        tokens = _field(reader, "tokenizer.ggml.tokens")
        assert len(tokens) == len(tok) == export.vocab_size
        assert all(tokens[tok.convert_tokens_to_ids(t)] == t for t in FIM_TOKENS)
        # transformers reloads the tiny BPE as a Qwen2 tokenizer (Qwen2's split): the converter's fallback names it
        assert _field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert export.sizes_mb["q8_0"] < export.sizes_mb["f16"]
    assert not list(export.folder.parent.glob(".gguf-*")), "the work folder is gone"


def test_the_f16_export_answers_like_the_hf_model_it_came_from(export, model_dir, adapter_dir, prompts):
    hf = HFCompletionBackend(model_dir, adapter_dir, max_batch=1)
    llama = LlamaCppCompletionBackend(export.path("f16"))
    try:
        agreement = greedy_agreement(hf, llama, prompts, max_tokens=16)
        texts = [llama.complete(p, suffix=s)[0] for p, s in prompts]
    finally:
        llama.close()
        hf.close()
    assert agreement.rate == 1.0 and agreement.total == len(prompts), agreement.differing
    assert len(set(texts)) > 1 and all(texts), "distinct, non-empty completions"
    assert agreement.reference_s > 0 and agreement.candidate_s > 0


def test_transformers_own_run_tells_a_near_tie_from_a_real_divergence(model_dir, adapter_dir, prompts):
    """judge_near_ties replays transformers' greedy run: a candidate that took the runner-up at the path's closest
    call parts at a near tie (accepted at a gap at least that close, refused below it); one that took the runner-up
    where transformers' pick led widely is a real divergence."""
    from ml.models.gguf_export import greedy_steps, judge_near_ties

    hf = HFCompletionBackend(model_dir, adapter_dir, max_batch=1)
    try:
        expected = greedy_answers(hf, prompts, 16)
        ids = hf.tokenize(build_completion_prompt(*prompts[0]))
        new, logits = greedy_steps(hf, ids, 16)
        assert hf.tokenizer.decode(new, skip_special_tokens=False) == expected.texts[0]  # the same run

        def text(tokens):
            return hf.tokenizer.decode(tokens, skip_special_tokens=False)

        def top_two(step):
            return torch.topk(logits[step], 2)

        def parts_here(k: int) -> bool:  # pick and runner-up write whole, different characters: the texts part at k
            pick, other = text(new[: k + 1]), text([*new[:k], int(top_two(k).indices[1])])
            return not (other.startswith(pick) or pick.endswith("\ufffd") or other.endswith("\ufffd"))

        def gap_at(k: int) -> float:
            return float(top_two(k).values[0] - top_two(k).values[1])

        def runner_up_at(k: int) -> str:
            return text([*new[:k], int(top_two(k).indices[1])])

        # the closest call and the widest lead among them
        steps = list(filter(parts_here, range(len(new))))
        step, wide = min(steps, key=gap_at), max(steps, key=gap_at)
        gap = gap_at(step)
        assert gap_at(wide) > gap + 1e-3

        def judged(candidate: str, epsilon: float):
            answers = Answers([candidate, *expected.texts[1:]], 1.0)
            return judge_near_ties(hf, prompts, compare_answers(expected, answers, prompts), 16, epsilon=epsilon)

        tie = judged(runner_up_at(step), gap + 1e-4)
        assert (tie.near_ties, tie.explained, tie.total) == (1, len(prompts), len(prompts)), tie.differing
        assert tie.differing[0]["step"] == step and tie.differing[0]["logit_gap"] == pytest.approx(gap, abs=1e-4)
        assert judged(runner_up_at(step), gap / 2).near_ties == 0  # the same text, with a tie rule tighter than its gap
        divergence = judged(runner_up_at(wide), gap + 1e-4)  # the runner-up where transformers' pick led widely
        assert divergence.near_ties == 0 and divergence.explained == len(prompts) - 1
        assert divergence.differing[0]["step"] == wide and "real divergence" in divergence.differing[0]["why"]
    finally:
        hf.close()


def test_agreement_on_known_answers():
    prompts = [("a", None), ("b", "x"), ("c", None), ("d", None)]
    reference = Answers(["1", "2", "3", "4"], 2.0)
    candidate = Answers(["1", "2", "x", "4"], 0.5)
    agreement = compare_answers(reference, candidate, prompts)
    assert (agreement.rate, agreement.same, agreement.total) == (0.75, 3, 4)
    assert agreement.differing == [{"prompt": 2, "prompt_tail": "c", "reference": "3", "candidate": "x"}]
    assert (agreement.reference_s, agreement.candidate_s) == (2.0, 0.5)
    with pytest.raises(ValueError, match="at least one prompt"):
        greedy_answers(object(), [])


def test_the_adapter_is_merged_into_the_export(export, model_dir, tmp_path, prompts):
    plain = export_gguf(model_dir, None, tmp_path / "plain", quantizations=())
    with_adapter, without = (LlamaCppCompletionBackend(e.path("f16")) for e in (export, plain))
    try:
        assert [with_adapter.complete(p, suffix=s)[0] for p, s in prompts] != \
            [without.complete(p, suffix=s)[0] for p, s in prompts]
    finally:
        with_adapter.close()
        without.close()


def _render_go_template(template: str, prompt: str, suffix: str) -> str:
    """The FIM Modelfile template as Ollama renders it (its one if/else, with the whitespace trims)."""
    match = re.fullmatch(r"\{\{- if \.Suffix \}\}(.*)\{\{- else \}\}(.*)\{\{- end \}\}", template, re.S)
    assert match, template
    chosen = match.group(1) if suffix else match.group(2)
    return chosen.replace("{{ .Prompt }}", prompt).replace("{{ .Suffix }}", suffix)


def test_the_modelfile_renders_the_prompt_the_server_builds(export):
    lines = (export.folder / "Modelfile").read_text().splitlines()
    (source,) = [ln for ln in lines if ln.startswith("FROM ")]
    assert (export.folder / source.removeprefix("FROM ")).resolve() == export.path("q8_0").resolve()
    (template_line,) = [ln for ln in lines if ln.startswith("TEMPLATE ")]
    template = template_line.removeprefix('TEMPLATE """').removesuffix('"""')
    assert template == export.template
    # Ollama sends no suffix as an empty .Suffix (false in a Go template): the plain prompt, as the server without one
    for prompt, suffix in (("def f(x):\n    return ", "\n\nprint(f(1))\n"), ("import os\n", "")):
        assert _render_go_template(template, prompt, suffix) == build_completion_prompt(prompt, suffix or None)
    stops = [ln.split(" ", 2)[2].strip('"') for ln in lines if ln.startswith("PARAMETER stop ")]
    assert set(FIM_TOKENS) | {"<|endoftext|>"} <= set(stops)
    assert "PARAMETER temperature 0" in lines
    assert lines[0] == "# in this folder: ollama create astforge-test -f Modelfile"


def _with_pre_tokenizer(folder: Path, pre: dict) -> Path:
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"] = pre
    (folder / "tokenizer.json").write_text(json.dumps(data))
    return folder


def test_the_pre_tokenizer_fallback_names_only_what_llama_cpp_has(model_dir, tmp_path):
    copy = Path(shutil.copytree(model_dir, tmp_path / "m"))
    assert known_pre_tokenizer(_with_pre_tokenizer(copy, {"type": "ByteLevel", "add_prefix_space": False,
                                                          "trim_offsets": True, "use_regex": True})) == "gpt-2"
    assert known_pre_tokenizer(_with_pre_tokenizer(copy, {"type": "Whitespace"})) is None
    # a tokenizer llama.cpp cannot reproduce fails the conversion with the converter's reason, writing nothing
    with pytest.raises(RuntimeError, match="pre-tokenizer was not recognized"):
        convert_to_gguf(copy, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_the_export_refuses_a_full_folder_and_unknown_quantizations(model_dir, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        export_gguf(model_dir, None, tmp_path / "full")
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    with pytest.raises(ValueError, match="q3_xx"):
        export_gguf(model_dir, None, tmp_path / "new", quantizations=("q3_xx",))


def test_a_file_that_is_not_a_gguf_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ValueError, match="could not load"):
        LlamaCppCompletionBackend(bad)
    with pytest.raises(ValueError, match="does not exist"):
        LlamaCppCompletionBackend(tmp_path / "nowhere.gguf")


def test_the_ollama_continue_config_names_the_exported_model():
    import yaml

    from assets.gguf_exports import SERVABLE

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "editors/continue/config.ollama.yaml").read_text())
    (model,) = config["models"]
    assert model["provider"] == "ollama" and "autocomplete" in model["roles"]
    assert model["model"] == SERVABLE["autocomplete_stage_b_gguf"].ollama_name
    assert model["defaultCompletionOptions"]["temperature"] == 0


def test_pieces_longer_than_32_bytes_are_decoded(tmp_path, corpus):
    # llama-cpp-python's own detokenize drops pieces over 32 bytes (SmolLM2 has 47, e.g. a newline and 40 spaces)
    long_piece = "\n" + " " * 44 + "return"
    tok = fim_tokenizer("tiny:qwen2", corpus, vocab_size=400)
    tok.add_tokens([long_piece])
    folder = save_base_model(base_model.tiny_model("qwen2", tok, seed=0), tok, tmp_path / "m")
    export = export_gguf(folder, None, tmp_path / "out", quantizations=())
    llama = LlamaCppCompletionBackend(export.path("f16"))
    try:
        ids = llama.tokenize(f"x = 1{long_piece} x")
        assert len(llama._decode(ids)) == len(f"x = 1{long_piece} x")
        assert llama._decode(ids) == f"x = 1{long_piece} x"
    finally:
        llama.close()


SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def test_a_chat_models_modelfile_keeps_the_default_system_turn(corpus):
    from ml.models.gguf_export import CHATML_TEMPLATE, FIM_TEMPLATE, ollama_template

    tok = fim_tokenizer("tiny:qwen2", corpus, vocab_size=300)
    assert ollama_template(tok, fim=True) == (FIM_TEMPLATE, None)
    assert ollama_template(tok, fim=False) == ("{{ .Prompt }}", None)  # no chat template: the prompt as is
    tok.chat_template = SMOLLM2_CHAT_TEMPLATE
    template, system = ollama_template(tok, fim=False)
    assert template == CHATML_TEMPLATE
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    # Ollama puts SYSTEM first in .Messages: the template then renders what the student was trained on
    rendered = "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n"
                       for role, content in (("system", system), ("user", "Request: x")))
    rendered += "<|im_start|>assistant\n"
    assert rendered == tok.apply_chat_template([{"role": "user", "content": "Request: x"}], tokenize=False,
                                               add_generation_prompt=True)

"""A trained model (a base folder and a LoRA adapter) as GGUF files for llama.cpp and Ollama.

:func:`export_gguf` merges the adapter into the base, converts the merged folder with llama.cpp's own converter
(``convert_hf_to_gguf.py``, run by :mod:`ml.models.gguf_convert`) to an f16 GGUF, quantizes it with llama.cpp's
quantizer (``llama_model_quantize`` from ``llama-cpp-python``: q8_0, q4_k_m...) and writes an Ollama ``Modelfile``
beside the files (the FIM template for a completion model, ChatML for a chat model, and the stop tokens).
:func:`greedy_agreement` compares what two completion engines answer to the same prompts (the HF model and its
export).

The converter comes with the llama-cpp-python sdist; ``make install`` unpacks it into
``$VIRTUAL_ENV/share/astforge/llama.cpp`` (``ASTFORGE_LLAMA_CPP_DIR`` points elsewhere).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ml.autocomplete.fim import FIM_MIDDLE, FIM_PREFIX, FIM_SUFFIX

LLAMA_CPP_DIR_ENV = "ASTFORGE_LLAMA_CPP_DIR"
# llama.cpp's file types (llama_ftype) by the names its quantize tool uses
QUANT_TYPES = {"q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
CONVERT_TIMEOUT_S = 1800
# stop tokens written into the Modelfile when the vocabulary has them
OLLAMA_STOPS = ("<|endoftext|>", "<|im_end|>", "<|im_start|>", FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, "<|fim_pad|>",
                "<|file_sep|>", "<|repo_name|>")
# Ollama's Go templates. FIM: Ollama sends `suffix` of /api/generate as .Suffix (what Continue does for
# autocomplete); without one the prompt is plain text. ChatML: SmolLM2's and Qwen's chat format.
FIM_TEMPLATE = ("{{- if .Suffix }}" + FIM_PREFIX + "{{ .Prompt }}" + FIM_SUFFIX + "{{ .Suffix }}" + FIM_MIDDLE
                + "{{- else }}{{ .Prompt }}{{- end }}")
CHATML_TEMPLATE = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                   "<|im_start|>assistant\n")


def llama_cpp_dir() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py``, its ``conversion`` package and ``gguf-py``."""
    env = os.environ.get(LLAMA_CPP_DIR_ENV)
    folder = Path(env) if env else Path(sys.prefix) / "share" / "astforge" / "llama.cpp"
    if not all((folder / part).exists() for part in ("convert_hf_to_gguf.py", "conversion", "gguf-py")):
        raise FileNotFoundError(
            f"llama.cpp's converter is not in {folder}: `make install` unpacks it from the llama-cpp-python sdist "
            f"(or set {LLAMA_CPP_DIR_ENV} to a llama.cpp checkout)")
    return folder


@dataclass
class GgufExport:
    """What :func:`export_gguf` wrote: ``files`` maps a variant (``f16``, ``q8_0``...) to its file name in
    ``folder``; ``seconds`` per step; ``sizes_mb`` per variant."""

    folder: Path
    files: dict[str, str]
    modelfile: str
    template: str
    stops: list[str]
    sizes_mb: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    vocab_size: int = 0

    def path(self, variant: str) -> Path:
        if variant not in self.files:
            raise KeyError(f"no {variant!r} export here; there are {sorted(self.files)}")
        return self.folder / self.files[variant]

    def to_json(self) -> dict[str, Any]:
        """What ``gguf_export.json`` records: not the folder (it moves when published) nor the timings (the
        folder's content version must not change when the same export is made again)."""
        return {k: v for k, v in asdict(self).items() if k not in ("folder", "seconds")}

    @classmethod
    def load(cls, folder: str | Path) -> GgufExport:
        """The export recorded in ``folder/gguf_export.json``."""
        folder = Path(folder)
        record = json.loads((folder / "gguf_export.json").read_text())
        return cls(**{**record, "folder": folder})


def merge_to_folder(base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path) -> Path:
    """The base with the adapter merged in, saved as a Hugging Face folder (fp32 weights, the tokenizer the
    adapter saved, else the base's: what the completion server loads). With no adapter the base as is."""
    from ml.models.loading import load_for_generation
    from ml.training.base_model import save_base_model

    model, tokenizer = load_for_generation(base_dir, adapter_dir)
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the model only {rows} embedding rows")
    return save_base_model(model, tokenizer, out_dir)


def _run_tool(args: list[str], what: str, timeout_s: float) -> None:
    cmd = [sys.executable, "-m", "ml.models.gguf_convert", *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_project_root(), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{what} ran past {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(f"{done.stdout}\n{done.stderr}".strip().splitlines()[-12:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}):\n{tail}")


def _project_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def convert_to_gguf(model_dir: str | Path, out_file: str | Path, outtype: str = "f16",
                    timeout_s: float = CONVERT_TIMEOUT_S) -> Path:
    """llama.cpp's converter on a Hugging Face folder; ``RuntimeError`` with the end of its log when it fails (an
    architecture or tokenizer it does not support)."""
    out_file = Path(out_file)
    _run_tool(["convert", str(llama_cpp_dir()), str(model_dir), "--outtype", outtype, "--outfile", str(out_file)],
              f"convert_hf_to_gguf.py on {model_dir}", timeout_s)
    if not out_file.is_file():
        raise RuntimeError(f"convert_hf_to_gguf.py wrote no {out_file}")
    return out_file


def quantize_gguf(src: str | Path, dst: str | Path, kind: str, threads: int | None = None,
                  timeout_s: float = CONVERT_TIMEOUT_S) -> Path:
    """``src`` (an f16/f32 GGUF) quantized to ``kind`` (a key of :data:`QUANT_TYPES`) by llama.cpp. Tensors whose
    rows do not fit the kind's block size (k-quants need multiples of 256) get llama.cpp's fallback type."""
    if kind not in QUANT_TYPES:
        raise ValueError(f"unknown quantization {kind!r}; known: {sorted(QUANT_TYPES)}")
    _run_tool(["quantize", str(src), str(dst), str(QUANT_TYPES[kind]), str(threads or os.cpu_count() or 1)],
              f"llama.cpp's quantizer ({kind}) on {src}", timeout_s)
    if not Path(dst).is_file():
        raise RuntimeError(f"llama.cpp's quantizer wrote no {dst}")
    return Path(dst)


def ollama_template(tokenizer, fim: bool) -> tuple[str, str | None]:
    """(the Modelfile TEMPLATE, its SYSTEM or None): the FIM template for a completion model; ChatML when the
    tokenizer's chat template is ChatML, with the system turn that template adds when a chat has none (SmolLM2's
    "You are a helpful AI assistant named SmolLM...": the DSL student was trained behind it); else the prompt as is."""
    if fim:
        return FIM_TEMPLATE, None
    chat = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" not in chat:
        return "{{ .Prompt }}", None
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "?"}], tokenize=False,
                                             add_generation_prompt=True)
    default = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", rendered, re.S)
    return CHATML_TEMPLATE, default.group(1) if default else None


def write_modelfile(folder: Path, gguf_name: str, template: str, stops: Sequence[str],
                    parameters: dict[str, Any], name: str, system: str | None = None) -> Path:
    """An Ollama ``Modelfile`` beside ``gguf_name``: ``ollama create NAME -f Modelfile`` in ``folder``."""
    lines = [f"# in this folder: ollama create {name} -f Modelfile", f"FROM ./{gguf_name}",
             f'TEMPLATE """{template}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in parameters.items()]
    path = folder / "Modelfile"
    path.write_text("\n".join(lines) + "\n")
    return path


def export_gguf(base_dir: str | Path, adapter_dir: str | Path | None, out_dir: str | Path, *,
                quantizations: Sequence[str] = ("q8_0",), fim: bool = True, modelfile_variant: str | None = None,
                context_length: int = 2048, name: str = "astforge-autocomplete",
                log: Callable[[str], None] = lambda _: None) -> GgufExport:
    """Merge, convert to f16, quantize to each of ``quantizations``, write the Modelfile (``FROM`` the
    ``modelfile_variant``, default the first quantization, else f16; ``name`` is the Ollama model name it suggests)
    and ``gguf_export.json``. ``fim``: a completion model (FIM template) rather than a chat one. ``out_dir`` must be
    empty or absent; on failure nothing is left half-written in it."""
    unknown = [q for q in quantizations if q not in QUANT_TYPES]
    if unknown:
        raise ValueError(f"unknown quantization(s) {unknown}; known: {sorted(QUANT_TYPES)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out_dir.parent) as tmp:
        work = Path(tmp) / "out"
        work.mkdir()
        t0 = time.monotonic()
        merged = merge_to_folder(base_dir, adapter_dir, Path(tmp) / "merged")
        seconds["merge"] = round(time.monotonic() - t0, 1)
        log(f"merged the adapter in {seconds['merge']} s; converting to GGUF f16")
        t0 = time.monotonic()
        files = {"f16": convert_to_gguf(merged, work / "model-f16.gguf", "f16").name}
        seconds["convert_f16"] = round(time.monotonic() - t0, 1)
        log(f"f16 GGUF in {seconds['convert_f16']} s")
        for kind in quantizations:
            t0 = time.monotonic()
            files[kind] = quantize_gguf(work / files["f16"], work / f"model-{kind}.gguf", kind).name
            seconds[f"quantize_{kind}"] = round(time.monotonic() - t0, 1)
            log(f"{kind} GGUF in {seconds[f'quantize_{kind}']} s")
        from ml.models.loading import load_tokenizer

        tokenizer = load_tokenizer(str(merged))
        vocab = tokenizer.get_vocab()
        stops = [s for s in OLLAMA_STOPS if s in vocab]
        template, system = ollama_template(tokenizer, fim)
        variant = modelfile_variant or (quantizations[0] if quantizations else "f16")
        if variant not in files:
            raise ValueError(f"modelfile_variant {variant!r} is not among the exports {sorted(files)}")
        parameters = {"temperature": 0, "num_ctx": context_length}
        write_modelfile(work, files[variant], template, stops, parameters, name, system)
        export = GgufExport(
            folder=out_dir, files=files, modelfile="Modelfile", template=template, stops=stops,
            sizes_mb={k: round((work / v).stat().st_size / 2**20, 1) for k, v in files.items()},
            seconds=seconds, vocab_size=len(vocab))
        (work / "gguf_export.json").write_text(json.dumps(export.to_json(), indent=1))
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); fails if something was written there meanwhile
        work.rename(out_dir)  # one rename: the folder is complete or absent
    return export


# ---------------------------------------------------------------------------------------------------- agreement


@dataclass
class Agreement:
    """Greedy answers of two engines to the same prompts: ``rate`` = the fraction answered with the same text;
    ``reference_s`` / ``candidate_s``: each engine's time for all of them (one at a time). ``near_ties``: how many
    of the ``differing`` prompts :func:`judge_near_ties` found to part only at a near tie (None: not judged)."""

    rate: float
    same: int
    total: int
    differing: list[dict]
    reference_s: float = 0.0
    candidate_s: float = 0.0
    near_ties: int | None = None

    @property
    def explained(self) -> int:
        """Prompts answered alike or parting only at a near tie."""
        return self.same + (self.near_ties or 0)


@dataclass
class Answers:
    """One engine's greedy answers to a prompt list, and its time for all of them (one at a time, after a warm-up
    request)."""

    texts: list[str]
    seconds: float


def greedy_answers(engine, prompts: Sequence[tuple[str, str | None]], max_tokens: int = 24,
                   stop: Sequence[str] = ()) -> Answers:
    """Each ``(prompt, suffix)`` completed greedily by ``engine`` (anything with ``complete(prompt, params,
    suffix=)``: :class:`ml.serving.completion_backend.HFCompletionBackend`,
    :class:`ml.serving.llama_cpp_backend.LlamaCppCompletionBackend`)."""
    from ml.serving.completion_jobs import SamplingParams

    if not prompts:
        raise ValueError("greedy answers need at least one prompt")
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=tuple(stop))
    engine.complete(prompts[0][0], SamplingParams(max_tokens=1), suffix=prompts[0][1])  # warm-up, off the clock
    t0 = time.perf_counter()
    texts = [engine.complete(prompt, params, suffix=suffix)[0] for prompt, suffix in prompts]
    return Answers(texts, round(time.perf_counter() - t0, 2))


def compare_answers(reference: Answers, candidate: Answers, prompts: Sequence[tuple[str, str | None]]) -> Agreement:
    differing = [{"prompt": i, "prompt_tail": prompt[-80:], "reference": want, "candidate": got}
                 for i, ((prompt, _), want, got) in enumerate(zip(prompts, reference.texts, candidate.texts,
                                                                   strict=True))
                 if got != want]
    same = len(prompts) - len(differing)
    return Agreement(rate=round(same / len(prompts), 4), same=same, total=len(prompts), differing=differing,
                     reference_s=reference.seconds, candidate_s=candidate.seconds)


def greedy_agreement(reference, candidate, prompts: Sequence[tuple[str, str | None]], max_tokens: int = 24,
                     stop: Sequence[str] = ()) -> Agreement:
    """Both engines' greedy answers to the same prompts, compared. One engine after the other, not interleaved:
    each runs on a quiet CPU (torch's OpenMP threads spin a while after a generate, which would slow the llama.cpp
    call that follows)."""
    return compare_answers(greedy_answers(reference, prompts, max_tokens, stop),
                           greedy_answers(candidate, prompts, max_tokens, stop), prompts)


def greedy_steps(reference, prompt_ids: list[int], max_tokens: int) -> tuple[list[int], list]:
    """transformers' greedy completion of ``prompt_ids`` as :class:`ml.serving.completion_backend.HFCompletionBackend`
    ``reference`` generates it (its model, stop tokens and settings), as (token ids, each step's logits)."""
    import torch

    device = reference.device
    with torch.no_grad():
        out = reference.model.generate(
            input_ids=torch.tensor([prompt_ids], device=device),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=device),
            max_new_tokens=max_tokens, do_sample=False, repetition_penalty=1.0, pad_token_id=reference.pad_id,
            eos_token_id=sorted(reference.stop_ids), output_logits=True, return_dict_in_generate=True)
    return out.sequences[0, len(prompt_ids):].tolist(), [row[0].float().cpu() for row in out.logits]


def judge_near_ties(reference, prompts: Sequence[tuple[str, str | None]], agreement: Agreement, max_tokens: int,
                    stop: Sequence[str] = (), epsilon: float | None = None) -> Agreement:
    """``agreement`` with each differing prompt judged by :func:`ml.models.near_tie.judge_divergence` against
    transformers' own greedy run (``reference``: the HF backend the answers came from; ``epsilon`` defaults to
    :data:`ml.models.near_tie.NEAR_TIE_EPSILON`): each gets ``near_tie``, ``step``, ``logit_gap`` and ``why``;
    ``near_ties`` counts the accepted ones."""
    from ml.models.near_tie import NEAR_TIE_EPSILON, judge_divergence
    from ml.serving.completion_jobs import build_completion_prompt

    tok = reference.tokenizer
    judged = []
    for row in agreement.differing:
        prompt_ids = reference.tokenize(build_completion_prompt(*prompts[row["prompt"]]))
        prompt_ids = prompt_ids or [reference.bos_id if reference.bos_id is not None else reference.pad_id]
        ids, logits = greedy_steps(reference, prompt_ids, max_tokens)
        context = prompt_ids[-5:]
        head = tok.decode(context, skip_special_tokens=False, clean_up_tokenization_spaces=False)

        def decode(new, context=context, head=head):
            # after a few prompt tokens, as the server decodes: a SentencePiece "▁x" piece keeps its space
            text = tok.decode([*context, *new], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return text[len(head):]

        verdict = judge_divergence(ids, logits, row["candidate"], decode, stop=stop, stop_ids=reference.stop_ids,
                                   epsilon=NEAR_TIE_EPSILON if epsilon is None else epsilon)
        judged.append({**row, "near_tie": verdict.near_tie, "step": verdict.step,
                       "logit_gap": None if verdict.margin is None else round(verdict.margin, 5),
                       "why": verdict.reason})
    return replace(agreement, differing=judged, near_ties=sum(r["near_tie"] for r in judged))

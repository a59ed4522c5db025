"""Local stand-ins of the `full` profile's hub bases, for tests on a machine without the hub.

Each stand-in has the real base's architecture (a few layers, random weights) and its tokenizer's shape: the same
special tokens at the same place relative to the base vocabulary (above it for Qwen2.5, at the bottom for Gemma 3),
the same eos / pad / bos choices, the same chat template text, and for Qwen2.5 the embedding rows past the
tokenizer that the real checkpoints carry (151936 rows for 151665 tokens). The BPE itself is trained here on a few
kilobytes of code: its merges are not the real ones, which no test depends on.

``build_mirror(root)`` writes them under ``root/<hub id>``, the layout ``ASTFORGE_MODEL_MIRROR`` reads.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

FIXTURES = Path(__file__).parent / "fixtures"

# Qwen2.5 (base and Coder share it): tokenizer_config.json's added tokens, in id order after the BPE vocabulary.
# The FIM and repo tokens are added but not special ("special": false), as in the real file.
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
QWEN_ADDED = ["<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
              "<|repo_name|>", "<|file_sep|>"]
# Qwen2.5's chat template, its tool-calling branches left out (nothing here calls tools).
QWEN_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\") %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Gemma 3: the control tokens sit at the bottom of the vocabulary (<pad> 0, <eos> 1, <bos> 2, <unk> 3 ...,
# <start_of_turn> 105, <end_of_turn> 106); unsloth's -it upload ends a turn with eos = <end_of_turn>.
GEMMA_SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>",
                 "<start_of_image>", "<end_of_image>"]
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = \"\" -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\\n'}}{%- endif -%}"
)

# hub id → (architecture, tokenizer family)
STANDINS = {
    "Qwen/Qwen2.5-0.5B": ("qwen2", "qwen"),
    "Qwen/Qwen2.5-Coder-0.5B": ("qwen2", "qwen"),
    "unsloth/gemma-3-270m-it": ("gemma3_text", "gemma"),
}
_SIZES = {
    "qwen2": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True},
    "gemma3_text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 1, "head_dim": 16, "query_pre_attn_scalar": 16,
                    "max_position_embeddings": 4096, "sliding_window": 64,
                    "layer_types": ["sliding_attention", "full_attention"], "tie_word_embeddings": True},
}


def _texts() -> list[str]:
    files = sorted(p for p in FIXTURES.rglob("*") if p.suffix in (".py", ".js", ".java") and p.is_file())
    texts = [p.read_text(errors="replace") for p in files]
    texts.append('{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}')
    return texts


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    raw.normalizer = normalizers.NFC()
    raw.train_from_iterator(_texts(), trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  unk_token=None, bos_token=None, model_max_length=131072,
                                  additional_special_tokens=QWEN_SPECIAL[1:], chat_template=QWEN_CHAT_TEMPLATE)
    tok.add_tokens(QWEN_ADDED, special_tokens=False)
    tok.padding_side = "right"
    return tok


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    raw.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    raw.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=700, special_tokens=GEMMA_SPECIAL,
                                                          show_progress=False))
    # Gemma's tokenizer puts <bos> before every text it encodes (add_bos_token)
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<end_of_turn>",
                                  pad_token="<pad>", unk_token="<unk>", model_max_length=32768,
                                  additional_special_tokens=["<start_of_turn>", "<start_of_image>", "<end_of_image>"],
                                  chat_template=GEMMA_CHAT_TEMPLATE)
    tok.padding_side = "left"  # as Gemma 3's tokenizer_config
    return tok


def build_standin(repo_id: str, folder: Path, seed: int = 0) -> Path:
    import torch

    arch, family = STANDINS[repo_id]
    tok = qwen_tokenizer() if family == "qwen" else gemma_tokenizer()
    # Qwen2.5's checkpoints hold padding rows past the tokenizer; Gemma's matrix is the tokenizer's size.
    rows = len(tok) + (32 if family == "qwen" else 0)
    cfg = AutoConfig.for_model(arch, vocab_size=rows, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id, **_SIZES[arch])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def build_mirror(root: Path, repo_ids=tuple(STANDINS)) -> Path:
    """Stand-ins of ``repo_ids`` under ``root/<owner>/<name>``; ``root`` for ``ASTFORGE_MODEL_MIRROR``."""
    for repo_id in repo_ids:
        if not (root / repo_id / "config.json").is_file():
            build_standin(repo_id, root / repo_id)
    return root

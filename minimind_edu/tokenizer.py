"""The course tokenizer: a byte-level BPE trained with Hugging Face ``tokenizers``, MiniMind-style.

Special tokens (as in MiniMind2): ``<|endoftext|>`` = 0 (padding / unknown), ``<|im_start|>`` = 1 (begin),
``<|im_end|>`` = 2 (end). A ChatML chat template is saved with it, and the saved folder loads with
``transformers.AutoTokenizer.from_pretrained(folder)``.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = SPECIAL_TOKENS
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
DEFAULT_VOCAB_SIZE = 6400
# Smallest useful vocabulary: the 256 byte tokens plus the special tokens.
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)

# ChatML: <|im_start|>role\ncontent<|im_end|>\n for each message; generation continues an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TokenizerError(ValueError):
    """Bad tokenizer input: the message names the argument, file or folder and what to do."""


def new_tokenizer() -> Tokenizer:
    """An untrained byte-level BPE pipeline (GPT-2's pre-tokenizer regex, no prefix space)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(
    documents: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens (special tokens take ids 0, 1, 2) on ``documents``."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs the 256 byte tokens plus "
            f"{len(SPECIAL_TOKENS)} special tokens, so at least {MIN_VOCAB_SIZE}"
        )
    docs = [d for d in documents if d and d.strip()]
    if not docs:
        raise TokenizerError("the corpus is empty: there is no non-blank document to train the tokenizer on")
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(docs, trainer=trainer, length=len(docs))
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.token_to_id(special) == i, "special tokens must take the first ids"
    return tok


def tokenizer_config() -> dict:
    """The ``tokenizer_config.json`` that makes ``AutoTokenizer`` use the right special tokens and template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": PAD_TOKEN,
        "unk_token": PAD_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "chat_template": CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                     "normalized": False, "single_word": False}
            for i, t in enumerate(SPECIAL_TOKENS)
        },
    }


def save_tokenizer(tok: Tokenizer, directory: str | os.PathLike) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), ensure_ascii=False, indent=2), encoding="utf-8"
    )
    return directory


def load_tokenizer(directory: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer folder written by :func:`save_tokenizer` (or MiniMind's own, from ``data/minimind``)."""
    directory = Path(directory)
    path = directory / "tokenizer.json" if directory.is_dir() or not directory.suffix else directory
    if not path.exists():
        raise TokenizerError(
            f"no tokenizer at {directory}: expected {path}; train one with "
            f"`minimind-edu train-tokenizer --out {directory}`"
        )
    return Tokenizer.from_file(str(path))


def apply_chat_template(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """Render messages in ChatML exactly as the saved Jinja template does (no transformers needed)."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

"""The course tokenizer: special ids, transformers compatibility, the chat template, save/load, errors.
(The ``train-tokenizer`` command is tested in test_cli.py.)"""
from __future__ import annotations

import json

import jinja2
import pytest
import transformers  # a test dependency (pyproject [test]): the reference for AutoTokenizer compatibility

from minimind_edu.corpus import CorpusError
from minimind_edu.tokenizer import (
    BOS_ID,
    CHAT_TEMPLATE,
    EOS_ID,
    MIN_VOCAB_SIZE,
    PAD_ID,
    SPECIAL_TOKENS,
    TokenizerError,
    apply_chat_template,
    default_tokenizer_dir,
    get_default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
    train_tokenizer_from_files,
)

SMALL_DOCS = [
    "Once upon a time, there was a little dog named Max. Max liked to run in the park.",
    "One day, the sun was bright and the birds were singing. Max ran and ran.",
    "《静夜思》李白\n床前明月光\n疑是地上霜\n举头望明月\n低头思故乡",
    "《春晓》孟浩然\n春眠不觉晓\n处处闻啼鸟\n夜来风雨声\n花落知多少",
] * 5
SAMPLES = [
    "Lily saw a big red ball. She was happy!",
    "床前明月光，疑是地上霜。",
    "Mixed 中英文 text with emoji 😀 and   spaces\n\nand lines.",
    "<|im_start|>user\nHi<|im_end|>\n<|endoftext|>",
]
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "写一首关于月亮的诗"},
    {"role": "assistant", "content": "床前明月光"},
    {"role": "user", "content": "Thanks!"},
]


@pytest.fixture(scope="module")
def small_tokenizer():
    return train_tokenizer(SMALL_DOCS, vocab_size=320)


@pytest.fixture(scope="module")
def course_dir():
    get_default_tokenizer()  # trains it once if .cache/ is empty
    return default_tokenizer_dir()


# --- the trained tokenizer -------------------------------------------------------------------------------------
def test_special_token_ids(small_tokenizer):
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # MiniMind2's, in MiniMind2's order
    assert (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    assert [small_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    assert small_tokenizer.encode("<|im_start|>hi<|im_end|>").ids[0] == BOS_ID
    assert small_tokenizer.encode("<|im_start|>hi<|im_end|>").ids[-1] == EOS_ID


def test_vocab_size_and_byte_fallback(small_tokenizer):
    assert small_tokenizer.get_vocab_size() == 320
    # Every byte has a token, so unseen characters still encode and decode losslessly.
    text = "Ωμέγα ∑ 🦙 ünïcödé"
    assert small_tokenizer.decode(small_tokenizer.encode(text).ids) == text


def test_course_tokenizer_has_6400_tokens():
    tok = get_default_tokenizer()
    assert tok.get_vocab_size() == 6400
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    for text in SAMPLES[:3]:
        assert tok.decode(tok.encode(text).ids) == text


def test_course_tokenizer_compresses_both_languages():
    tok = get_default_tokenizer()
    en, zh = "Once upon a time, there was a little girl named Lily.", "床前明月光，疑是地上霜。举头望明月，低头思故乡。"
    assert len(tok.encode(en).ids) < len(en) / 3
    assert len(tok.encode(zh).ids) < len(zh.encode("utf-8")) / 2


# --- transformers compatibility --------------------------------------------------------------------------------
def test_auto_tokenizer_gives_the_same_ids(course_dir):
    hf = transformers.AutoTokenizer.from_pretrained(str(course_dir))
    tok = load_tokenizer(course_dir)
    for text in SAMPLES:
        assert hf(text)["input_ids"] == tok.encode(text).ids, text
    assert (hf.pad_token_id, hf.bos_token_id, hf.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert len(hf) == 6400


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_auto_tokenizer_chat_template_matches(course_dir, add_generation_prompt):
    hf = transformers.AutoTokenizer.from_pretrained(str(course_dir))
    ours = apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt)
    assert hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt) == ours
    assert ours.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


@pytest.mark.parametrize(
    "add_generation_prompt, expected",
    [(False, "<|im_start|>user\n你好<|im_end|>\n"),
     (True, "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n")],
)
def test_chat_template_worked_example(add_generation_prompt, expected):
    messages = [{"role": "user", "content": "你好"}]
    assert apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected
    # The Jinja template saved for transformers renders the same text.
    rendered = jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=add_generation_prompt)
    assert rendered == expected


# --- save / load -----------------------------------------------------------------------------------------------
def test_save_load_round_trip(small_tokenizer, tmp_path):
    folder = save_tokenizer(small_tokenizer, tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} == {"tokenizer.json", "tokenizer_config.json"}
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert config["chat_template"] == CHAT_TEMPLATE
    loaded = load_tokenizer(folder)
    assert loaded.get_vocab() == small_tokenizer.get_vocab()
    for text in SAMPLES:
        assert loaded.encode(text).ids == small_tokenizer.encode(text).ids
    assert load_tokenizer(folder / "tokenizer.json").get_vocab_size() == 320  # a file path works too


def test_training_is_deterministic(small_tokenizer):
    again = train_tokenizer(SMALL_DOCS, vocab_size=320)
    assert again.to_str() == small_tokenizer.to_str()


# --- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("docs", [[], ["", "  \n "]])
def test_empty_corpus(docs):
    with pytest.raises(TokenizerError, match="the corpus is empty"):
        train_tokenizer(docs, vocab_size=300)


def test_vocab_size_too_small():
    assert MIN_VOCAB_SIZE == 259  # the 256 byte tokens + 3 special tokens
    with pytest.raises(TokenizerError, match=r"vocab_size=258 is too small.*at least 259"):
        train_tokenizer(SMALL_DOCS, vocab_size=258)
    assert train_tokenizer(SMALL_DOCS, vocab_size=259).get_vocab_size() == 259


def test_missing_tokenizer_directory(tmp_path):
    with pytest.raises(TokenizerError, match=r"no tokenizer at .*nothing_here.*minimind-edu train-tokenizer --out"):
        load_tokenizer(tmp_path / "nothing_here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenizerError, match=r"no tokenizer at .*empty"):
        load_tokenizer(tmp_path / "empty")


def test_save_into_a_file_path(small_tokenizer, tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(TokenizerError, match="taken is a file; give a folder"):
        save_tokenizer(small_tokenizer, tmp_path / "taken")


def test_corrupt_tokenizer_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: not a valid tokenizer\.json"):
        load_tokenizer(tmp_path)


def test_train_from_files_errors(tmp_path):
    bad = tmp_path / "cp1252.txt"
    bad.write_bytes("smart “quotes”".encode("cp1252"))
    with pytest.raises(CorpusError, match=r"cp1252\.txt: not UTF-8.*byte offset 6"):
        train_tokenizer_from_files([bad], vocab_size=300)
    with pytest.raises(TokenizerError, match="no corpus files given"):
        train_tokenizer_from_files([], vocab_size=300)
    # vocab_size is checked before the (missing) file is read
    with pytest.raises(TokenizerError, match="vocab_size=100 is too small"):
        train_tokenizer_from_files([tmp_path / "missing.txt"], vocab_size=100)


def test_default_tokenizer_cache_is_keyed_by_its_recipe(tmp_path, monkeypatch):
    from minimind_edu.corpus import DEFAULT_FILES, data_dir

    get_default_tokenizer()
    base = default_tokenizer_dir()
    assert base.name.startswith("tokenizer-6400-")
    recipe = json.loads((base / "recipe.json").read_text())
    assert recipe["vocab_size"] == 6400 and list(recipe["files"]) == list(DEFAULT_FILES["train"])
    assert default_tokenizer_dir(4000).name.startswith("tokenizer-4000-")  # another vocabulary, another folder
    copy = tmp_path / "data"
    for name in DEFAULT_FILES["train"]:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).symlink_to(data_dir() / name)
    monkeypatch.setenv("MINIMIND_EDU_DATA", str(copy))
    assert default_tokenizer_dir() == base  # the same contents elsewhere: the same tokenizer
    changed = copy / DEFAULT_FILES["train"][-1]
    changed.unlink()
    changed.write_text("一个新的故事。", encoding="utf-8")
    assert default_tokenizer_dir() != base  # a changed corpus is retrained, not served from a stale cache


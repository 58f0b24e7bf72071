"""The ``presets`` and ``train-tokenizer`` commands: what they print, what they write, one-line errors.
(``memory``, ``pretrain``, ``generate`` and ``export`` are tested in test_cli_memory.py and test_cli_pretrain.py.)
"""
from __future__ import annotations

import json
import re

import pytest

from minimind_edu.cli import main
from minimind_edu.tokenizer import get_default_tokenizer, load_tokenizer, train_tokenizer_from_files

# --- presets -------------------------------------------------------------------------------------------------

# The sizes are derived by hand in test_model.py (PRESET_SIZES): total, embedding and one block's parameters.
PRESETS_TABLE = [
    ["preset", "total", "embedding", "per block", "hidden", "layers", "heads/kv", "head_dim", "ffn", "vocab",
     "max_pos", "qk_norm", "experts"],
    ["minimind2-small", "25,829,888", "3,276,800", "2,819,072", "512", "8", "8/2", "64", "1408", "6400", "32768",
     "no", "-"],
    ["minimind2", "104,030,976", "4,915,200", "6,194,688", "768", "16", "8/2", "96", "2048", "6400", "32768",
     "no", "-"],
    ["minimind2-moe", "145,029,760", "4,096,000", "17,616,640", "640", "8", "8/2", "80", "1728", "6400", "32768",
     "no", "4 (top-2, +1 shared)"],
    ["minimind3", "63,912,192", "4,915,200", "7,374,528", "768", "8", "8/4", "96", "2432", "6400", "32768",
     "yes", "-"],
    ["minimind3-moe", "198,416,640", "4,915,200", "24,187,584", "768", "8", "8/4", "96", "2432", "6400", "32768",
     "yes", "4 (top-1, +0 shared)"],
    ["course-cpu", "4,458,752", "1,638,400", "705,024", "256", "4", "8/2", "32", "704", "6400", "2048", "no", "-"],
    ["tiny", "508,224", "409,600", "49,280", "64", "2", "4/2", "16", "192", "6400", "512", "no", "-"],
]


def test_presets_table(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [re.split(r"\s{2,}", line.strip()) for line in lines] == PRESETS_TABLE  # columns: 2 spaces or more
    assert len({len(line.rstrip()) for line in lines}) == 1  # aligned: every line as long as the header


def test_presets_json(capsys):
    assert main(["presets", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["preset"], r["total"]) for r in rows] == [
        ("minimind2-small", 25_829_888), ("minimind2", 104_030_976), ("minimind2-moe", 145_029_760),
        ("minimind3", 63_912_192), ("minimind3-moe", 198_416_640), ("course-cpu", 4_458_752), ("tiny", 508_224),
    ]
    assert rows[0] == {
        "preset": "minimind2-small", "total": 25_829_888, "embedding": 3_276_800, "per_block": 2_819_072,
        "hidden_size": 512, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "head_dim": 64,
        "intermediate_size": 1408, "vocab_size": 6400, "max_position_embeddings": 32768, "qk_norm": False,
        "num_experts": 0, "experts_per_token": 0, "shared_experts": 0,  # a dense model: no experts to route to
    }
    assert rows[2] == {
        "preset": "minimind2-moe", "total": 145_029_760, "embedding": 4_096_000, "per_block": 17_616_640,
        "hidden_size": 640, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "head_dim": 80,
        "intermediate_size": 1728, "vocab_size": 6400, "max_position_embeddings": 32768, "qk_norm": False,
        "num_experts": 4, "experts_per_token": 2, "shared_experts": 1,
    }


# --- train-tokenizer -----------------------------------------------------------------------------------------

STORIES = [
    "Once upon a time, there was a little dog named Max. Max liked to run in the park.",
    "One day, the sun was bright and the birds were singing. Max ran and ran.",
]
POEMS = [
    "《静夜思》李白\n床前明月光\n疑是地上霜\n举头望明月\n低头思故乡",
    "《春晓》孟浩然\n春眠不觉晓\n处处闻啼鸟\n夜来风雨声\n花落知多少",
]


@pytest.fixture
def small_corpus(tmp_path):
    """One plain-text file of stories separated by <|endoftext|>, one JSONL file of poems."""
    text_file = tmp_path / "stories.txt"
    text_file.write_text("<|endoftext|>".join(STORIES * 5) + "<|endoftext|>", encoding="utf-8")
    jsonl_file = tmp_path / "poems.jsonl"
    jsonl_file.write_text("\n".join(json.dumps({"text": d}, ensure_ascii=False) for d in POEMS * 5),
                          encoding="utf-8")
    return text_file, jsonl_file


def test_train_tokenizer_command(small_corpus, tmp_path, capsys):
    out = tmp_path / "cli_tok"
    rc = main(["train-tokenizer", "--out", str(out), "--data", *map(str, small_corpus), "--vocab-size", "300"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert re.fullmatch(
        rf"trained in \d+\.\d\d s \(reading the corpus included\): vocab size 300, saved to {re.escape(str(out))}\n",
        printed,
    )
    tok = load_tokenizer(out)
    assert tok.get_vocab_size() == 300
    library = train_tokenizer_from_files(small_corpus, vocab_size=300)
    assert tok.to_str() == library.to_str()  # the command is a thin wrapper around the library


def test_train_tokenizer_command_defaults_to_the_shipped_corpus(tmp_path, capsys):
    out = tmp_path / "default_tok"
    assert main(["train-tokenizer", "--out", str(out)]) == 0
    assert "vocab size 6400" in capsys.readouterr().out
    assert load_tokenizer(out).to_str() == get_default_tokenizer().to_str()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--vocab-size", "10"], r"vocab_size=10 is too small.* at least 259"),
     (["--data", "does_not_exist.txt"], r"does_not_exist\.txt: no such corpus file")],
)
def test_train_tokenizer_errors_are_one_line(tmp_path, capsys, extra, message):
    assert main(["train-tokenizer", "--out", str(tmp_path / "x"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("minimind-edu train-tokenizer: error: ") and re.search(message, err)
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x").exists()  # nothing written on failure

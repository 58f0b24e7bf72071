"""`minimind-edu pretrain / generate / export` end to end on the tiny preset: train, resume, sample, export,
and reload the export in transformers with the same logits."""
from __future__ import annotations

import json

import pytest
import torch

from minimind_edu.checkpoint import load_model, resolve_checkpoint
from minimind_edu.cli import main
from minimind_edu.corpus import default_corpus_files
from minimind_edu.flops import training_flops_per_token
from minimind_edu.metrics import read_metrics
from minimind_edu.model import get_preset

from launch import run_torchrun

TINY = ["--preset", "tiny", "--batch", "4", "--seq", "32", "--device", "cpu", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small bilingual training file (first stories and poems of the shipped corpus): tokenizes in a blink."""
    files = {path.name: path for path in default_corpus_files("train")}
    en, zh = files["tinystories_train.txt"], files["tang_train.txt"]
    text = en.read_text(encoding="utf-8")[:20_000] + "<|endoftext|>" + zh.read_text(encoding="utf-8")[:8_000]
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = main(["pretrain", *TINY, "--data", str(corpus), "--steps", "8", "--save-every", "4", "--eval-every", "4",
                 "--samples", "0", "--out", str(out)])
    assert code == 0
    return out


def test_pretrain_writes_checkpoints_metrics_and_summary(run_dir):
    assert (run_dir / "checkpoints" / "step_00000008" / "model.safetensors").exists()
    assert (run_dir / "checkpoints" / "step_00000008" / "tokenizer.json").exists()
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"step", "tokens", "loss", "lr", "tokens_per_s"} <= set(records[0])
    assert records[-1]["tokens"] == 8 * 4 * 32
    assert [r["step"] for r in records if "val_loss" in r] == [4, 8]
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["step"] == 8 and summary["val_loss"] == records[-1]["val_loss"]
    assert set(summary["by_text_type"]) == {"en-stories", "zh-verse", "zh-prose"}
    assert all(r["bits_per_byte"] > 0 for r in summary["by_text_type"].values())
    assert (run_dir / "loss_curve.png").stat().st_size > 1000
    # a run set by steps is not compiled unless asked (its length in time is unknown)
    assert (summary["batch"], summary["seq"], summary["compile"]) == (4, 32, None)
    # the rate every record's "mfu" is against (on a CPU its measured matmul rate), so the run says how fast the
    # machine was
    per_token = training_flops_per_token(get_preset("tiny"), 32)
    assert summary["peak_flops"] > 1e9
    assert records[-1]["mfu"] == pytest.approx(records[-1]["tokens_per_s"] * per_token / summary["peak_flops"])


def test_compile_without_a_cpp_compiler_trains_eagerly_and_says_so(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    out = tmp_path / "run"
    assert main(["pretrain", *TINY, "--data", str(corpus), "--steps", "2", "--samples", "0", "--eval-every", "0",
                 "--compile", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["step"] == 2 and summary["compile"].startswith("off (no C++ compiler found")
    printed = capsys.readouterr()
    assert "torch.compile cannot run here, so training continues without it: no C++ compiler" in printed.err
    assert "torch.compile: off (no C++ compiler found" in printed.out


def test_resume_after_a_lost_checkpoint_repeats_the_same_steps(run_dir, corpus, tmp_path):
    # As if the run had been killed after step 4's checkpoint: resuming redoes steps 5-8 exactly (CPU, bitwise).
    import shutil

    copy = tmp_path / "killed"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "step_00000008")
    code = main(["pretrain", *TINY, "--data", str(corpus), "--steps", "8", "--save-every", "4", "--eval-every", "4",
                 "--samples", "0", "--out", str(copy), "--resume"])
    assert code == 0

    def strip(records):  # what depends on the machine's speed
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu", "peak_mem", "elapsed_s")}
                for r in records]
    assert strip(read_metrics(copy)) == strip(read_metrics(run_dir))


def test_resume_with_more_steps_extends_the_run(run_dir, corpus, tmp_path, capsys):
    import shutil

    copy = tmp_path / "extended"
    shutil.copytree(run_dir, copy)
    before = read_metrics(copy)
    code = main(["pretrain", *TINY, "--data", str(corpus), "--steps", "12", "--save-every", "4", "--eval-every", "4",
                 "--samples", "12", "--out", str(copy), "--resume"])
    assert code == 0
    records = read_metrics(copy)
    assert records[:8] == before
    assert [r["step"] for r in records] == list(range(1, 13))
    assert resolve_checkpoint(copy).name == "step_00000012"
    printed = capsys.readouterr().out
    assert "training until step 12 (was 8)" in printed
    assert "[en] Once upon a time" in printed and "[zh] 《春夜》" in printed  # samples were streamed
    assert "validation loss reached after 12 steps" in printed


def test_generate_streams_a_continuation(run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("[prompt] Once upon a time") and len(first.strip()) > len("[prompt] Once upon a time")
    main(["generate", str(run_dir), "--prompt", "Once upon a time", "--max-new-tokens", "8", "--seed", "1"])
    assert capsys.readouterr().out == first  # a seed makes sampling repeatable
    assert main(["generate", str(run_dir), "--chat", "--prompt", "hello", "--max-new-tokens", "4", "--seed", "0"]) == 0
    assert capsys.readouterr().out.startswith("user: hello\nassistant: ")


def test_export_loads_in_transformers_with_the_same_logits(run_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    hf_dir = tmp_path / "hf"
    assert main(["export", str(run_dir), str(hf_dir)]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    ours = load_model(run_dir)
    text = "Once upon a time, a cat sat. 床前明月光"
    from minimind_edu.tokenizer import load_tokenizer

    ids = [1] + load_tokenizer(resolve_checkpoint(run_dir)).encode(text).ids
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids[1:]  # the same tokenizer
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(x).logits, ours(x).logits, atol=1e-4, rtol=1e-4)
    # and generate reads the exported folder too
    assert main(["generate", str(hf_dir), "--prompt", "Once", "--max-new-tokens", "3", "--seed", "0"]) == 0


def test_minimind_jsonl_data_works_unchanged(tmp_path):
    # MiniMind's own pretraining format: one {"text": ...} per line (its sample file ships in data/minimind)
    from minimind_edu.corpus import data_dir

    sample = data_dir() / "minimind" / "pretrain_data_example.jsonl"
    out = tmp_path / "jsonl"
    assert main(["pretrain", *TINY, "--data", str(sample), "--steps", "2", "--samples", "0", "--out", str(out)]) == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2]


def test_bad_arguments_give_one_line_errors(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    assert main(["pretrain", *TINY, "--data", str(missing), "--steps", "1", "--out", str(tmp_path / "x")]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "no-run")]) == 2
    assert "no-run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: --steps and --minutes are alternatives
        main(["pretrain", "--steps", "3", "--minutes", "1"])


@pytest.mark.parametrize("option, value, message", [
    ("--batch", "0", "--batch must be at least 1, got 0"),
    ("--seq", "0", "--seq must be at least 1, got 0"),
    ("--minutes", "0", "--minutes must be a positive finite number, got 0"),
    ("--lr", "inf", "--lr must be a positive finite number, got inf"),
    ("--epochs", "-1", "--epochs must be a positive finite number, got -1"),
    ("--threads", "0", "--threads must be at least 1, got 0"),
    ("--accum", "0", "--accum must be at least 1, got 0"),
])
def test_bad_numbers_are_named_before_any_work(option, value, message, tmp_path, capsys):
    # 0 used to fall back silently to the default (16 x 256, all threads); now it is refused, naming the option.
    args = ["pretrain", "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "x"), option, value]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "x").exists()  # refused before tokenizing or training


def test_bad_data_files_name_the_file_and_line(tmp_path, capsys):
    run = ["pretrain", *TINY, "--steps", "1", "--samples", "0", "--out", str(tmp_path / "x"), "--data"]
    assert main([*run, str(tmp_path)]) == 2  # a folder, not a file
    assert f"--data {tmp_path}: is a folder" in capsys.readouterr().err
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Once upon a time, café\n".encode("latin-1"))
    assert main([*run, str(latin1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(latin1) in err and "UTF-8" in err
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"text": "Once upon a time"}\n{"content": "a story"}\n', encoding="utf-8")
    assert main([*run, str(no_text)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{no_text}:2" in err and '"text"' in err


def test_generate_and_export_without_a_checkpoint_say_so(tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    for command in (["generate", str(empty)], ["export", str(empty), str(tmp_path / "hf")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(empty) in err and "no checkpoint" in err


@pytest.mark.parametrize("option, value, message", [
    ("--max-new-tokens", "-1", "--max-new-tokens must be at least 1, got -1"),
    ("--temperature", "-1", "--temperature must be >= 0"),
    ("--top-k", "-5", "--top-k must be >= 0"),
    ("--top-p", "2", "--top-p must be in (0, 1], got 2"),
    ("--device", "bogus", "--device bogus:"),
])
def test_bad_sampling_options_fail_before_any_output(option, value, message, run_dir, capsys):
    assert main(["generate", str(run_dir), "--prompt", "Once", option, value]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and message in captured.err


def test_pretrain_names_a_bad_device(tmp_path, capsys):
    args = ["pretrain", "--preset", "tiny", "--device", "bogus", "--steps", "1", "--out", str(tmp_path / "x")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device bogus:" in err


def test_export_refuses_to_overwrite_its_own_checkpoint(run_dir, capsys):
    checkpoint = resolve_checkpoint(run_dir)
    assert main(["export", str(run_dir), str(checkpoint)]) == 2
    assert "that is the checkpoint being exported" in capsys.readouterr().err
    assert not (checkpoint / "config.json").exists() or "architectures" not in (checkpoint / "config.json").read_text()


def test_the_same_command_under_torchrun_equals_one_process(corpus, tmp_path):
    """`torchrun --nproc_per_node 2 -m minimind_edu.cli pretrain` (gloo on CPU): --batch is per process, so
    2 x 2 sequences per step must give the losses of one process with 4, and only rank 0 writes records."""
    import os

    common = ["--preset", "tiny", "--seq", "32", "--device", "cpu", "--no-progress", "--log-every", "1",
              "--precision", "fp32", "--data", str(corpus), "--steps", "3", "--eval-every", "3",
              "--save-every", "3", "--samples", "0", "--threads", "1"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["pretrain", *common, "--batch", "4", "--out", str(single)]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = run_torchrun(["-m", "minimind_edu.cli", "pretrain", *common, "--batch", "2", "--out", str(ddp)],
                        env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = read_metrics(single), read_metrics(ddp)
    assert [r["step"] for r in b] == [r["step"] for r in a] == [1, 2, 3]  # rank 0 alone wrote the file
    assert [r["tokens"] for r in b] == [r["tokens"] for r in a] == [128, 256, 384]
    torch.testing.assert_close([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-5, atol=1e-6)
    summary = json.loads((ddp / "summary.json").read_text(encoding="utf-8"))
    assert summary["tokens"] == 384

"""Nothing is lost, whatever the learner does: each case is something a careless or unlucky learner did.

Two runs on one --out, a new run into an old run's folder, a resume with changed settings, a learning rate that
diverges, a checkpoint cut short, a JSONL file with another suffix, a folder that cannot be written: each is
refused with one line that names the problem, or survived, and no earlier work is damaged.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minimind_edu.checkpoint import latest_checkpoint, list_checkpoints, load_model
from minimind_edu.cli import main, os_error_advice
from minimind_edu.corpus import default_corpus_files, detect_format, read_documents
from minimind_edu.data import tokenize_files
from minimind_edu.metrics import read_metrics
from minimind_edu.run_folder import RunLock
from minimind_edu.tokenizer import default_tokenizer_dir
from minimind_edu.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--batch", "4", "--seq", "32", "--device", "cpu", "--no-progress", "--log-every", "1",
        "--samples", "0"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    en = default_corpus_files("train")[0]
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text(en.read_text(encoding="utf-8")[:12_000], encoding="utf-8")
    return path


def pretrain(corpus: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", *TINY, "--data", str(corpus), "--out", str(out), "--eval-every", "0", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("note:")]
    assert len(lines) == 1, err
    return lines[0]


def cli_process(*args: str, cache: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MINIMIND_EDU_CACHE=str(cache))
    env.pop("WORLD_SIZE", None)
    return subprocess.Popen([sys.executable, "-m", "minimind_edu.cli", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# --- the output folder --------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_out_is_refused_while_the_first_runs(corpus, tmp_path):
    out = tmp_path / "run"
    common = ["pretrain", *TINY, "--data", str(corpus), "--out", str(out), "--eval-every", "0", "--steps", "400"]
    first = cli_process(*common, cache=tmp_path / "cache")
    try:
        deadline = time.time() + 120
        while not (out / ".lock").exists():  # the first run holds the folder once it starts training
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.2)
        second = cli_process(*common, "--overwrite", cache=tmp_path / "cache")
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert f"is in use by another run (pid {first.pid} on" in err and err.count("\n") == 1, err
    finally:
        first.kill()
        first.wait()
    # killed with SIGKILL, the first run left its lock; the next run takes it over and says so
    assert (out / ".lock").exists()
    with RunLock(out):
        pass
    assert not (out / ".lock").exists()


def test_a_new_run_into_a_used_folder_is_refused_and_overwrite_moves_the_old_run_aside(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--steps", "2") == 0
    first_metrics = read_metrics(out)
    capsys.readouterr()
    assert pretrain(corpus, out, "--steps", "3") == 2
    assert "holds an earlier run; continue it with --resume, start afresh with --overwrite" in one_line_error(capsys)
    assert read_metrics(out) == first_metrics and len(list_checkpoints(out)) == 2  # untouched
    assert pretrain(corpus, out, "--steps", "3", "--overwrite") == 0
    (aside,) = tmp_path.glob("run.previous-*")
    assert read_metrics(aside) == first_metrics and list_checkpoints(aside)[-1].name == "step_00000002"
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]  # the new run's records only, never mixed


def test_resume_without_a_checkpoint_and_an_out_that_is_a_file_are_errors(corpus, tmp_path, capsys):
    assert pretrain(corpus, tmp_path / "typo", "--steps", "2", "--resume") == 2
    assert "no checkpoint to resume from (is the folder right?)" in one_line_error(capsys)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert pretrain(corpus, a_file, "--steps", "2") == 2
    assert one_line_error(capsys).endswith(f"--out {a_file}: is a file, not a folder; give a folder for the run's "
                                           "output")


def test_export_refuses_a_run_folder(corpus, tmp_path, capsys):
    run, other = tmp_path / "run", tmp_path / "other"
    assert pretrain(corpus, run, "--steps", "2") == 0 and pretrain(corpus, other, "--steps", "2") == 0
    capsys.readouterr()
    assert main(["export", str(run), str(other)]) == 2
    assert "that is a training run's folder; export into a new folder" in one_line_error(capsys)


# --- resume checks what it continues -------------------------------------------------------------------------
def test_resume_names_every_changed_setting_and_force_continues(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--steps", "2") == 0
    capsys.readouterr()
    assert pretrain(corpus, out, "--steps", "4", "--resume", "--batch", "2", "--accum", "2") == 2
    error = one_line_error(capsys)
    assert "cannot resume, 2 setting(s) differ from the checkpoint's: batch_size: 4 -> 2; grad_accum_steps: 1 -> 2" \
        in error and "add --force" in error
    # another tokenizer: the same name, other ids
    other_tok = tmp_path / "tok"
    shutil.copytree(default_tokenizer_dir(), other_tok)
    config = json.loads((other_tok / "tokenizer.json").read_text())
    config["model"]["merges"] = config["model"]["merges"][:-1]  # one merge fewer: some texts tokenize otherwise
    (other_tok / "tokenizer.json").write_text(json.dumps(config))
    assert pretrain(corpus, out, "--steps", "4", "--resume", "--tokenizer", str(other_tok)) == 2
    assert "tokenizer: " in one_line_error(capsys)
    # other data: the same path, other content
    edited = tmp_path / "stories.txt"
    edited.write_text(corpus.read_text(encoding="utf-8") + "\n\nOne more story about a dog.", encoding="utf-8")
    assert pretrain(edited, out, "--steps", "4", "--resume") == 2
    assert "train_data: " in one_line_error(capsys)
    # the same data copied elsewhere, and a longer run: harmless, so it continues
    copy = tmp_path / "copy.txt"
    shutil.copyfile(corpus, copy)
    assert pretrain(copy, out, "--steps", "4", "--resume") == 0
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert pretrain(corpus, out, "--steps", "5", "--resume", "--batch", "2", "--force") == 0
    assert "resume --force: continuing" in capsys.readouterr().err


# --- non-finite values ----------------------------------------------------------------------------------------
def test_a_diverging_run_stops_before_saving_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch,
                                                                                capsys):
    out = tmp_path / "run"
    real_step = Trainer.train_step

    def step_that_diverges_at_5(self):
        loss, norm = real_step(self)
        return (float("nan"), norm) if self.step >= 5 else (loss, norm)

    monkeypatch.setattr(Trainer, "train_step", step_that_diverges_at_5)
    assert pretrain(corpus, out, "--steps", "8", "--save-every", "2") == 2
    error = one_line_error(capsys)
    assert "error: step 5: the loss is nan (gradient norm" in error
    assert f"training diverged, and stopped before saving anything; the last good checkpoint, {out}" in error
    assert [p.name for p in list_checkpoints(out)] == ["step_00000002", "step_00000004"]  # nothing pruned
    text = (out / "metrics.jsonl").read_text()
    assert "NaN" not in text and [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert not (out / ".lock").exists()  # the lock is released on the way out


def test_a_checkpoint_with_nan_weights_is_refused_by_name(corpus, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    out = tmp_path / "run"
    assert pretrain(corpus, out, "--steps", "2") == 0
    ckpt = latest_checkpoint(out)
    weights = load_file(ckpt / "model.safetensors")
    weights["norm.weight"][0] = float("nan")
    save_file(weights, ckpt / "model.safetensors")
    (ckpt / "manifest.json").unlink()  # as an older checkpoint would be: nothing to verify it against
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Once"]) == 2
    assert "hold NaN or infinity (norm.weight, ...): the run had diverged" in one_line_error(capsys)


# --- damaged checkpoints ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("damaged", ["model.safetensors", "state.pt"])
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(damaged, corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--steps", "4", "--save-every", "2") == 0
    newest = latest_checkpoint(out)
    data = (newest / damaged).read_bytes()
    (newest / damaged).write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert load_model(out) is not None  # generate, export and load_model all read the previous one
    assert f"skipping checkpoint {newest}: {damaged} has {len(data) // 2:,} bytes" in capsys.readouterr().err
    assert main(["export", str(out), str(tmp_path / "hf")]) == 0
    assert pretrain(corpus, out, "--steps", "4", "--save-every", "2", "--resume") == 0  # redoes steps 3 and 4
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
    assert torch.load(latest_checkpoint(out) / "state.pt", weights_only=True)["step"] == 4
    for ckpt in list_checkpoints(out):  # damage every one: then it says so, in one line
        (ckpt / "state.pt").write_bytes(b"")
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Once"]) == 2
    assert "no usable checkpoint: step_00000004 (state.pt has 0 bytes" in one_line_error(capsys)


# --- formats ------------------------------------------------------------------------------------------------------
def test_the_format_comes_from_the_content_and_the_cache_knows_it(tmp_path):
    lines = [json.dumps({"text": f"Story number {i}: a cat sat on a mat."}) for i in range(5)]
    for name in ("x.JSONL", "x.json", "y.jsonl"):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert detect_format(tmp_path / name) == "jsonl"
        assert read_documents(tmp_path / name) == [f"Story number {i}: a cat sat on a mat." for i in range(5)]
    upper = tokenize_files(tmp_path / "x.JSONL", progress=False)
    assert upper.n_docs == 5  # five documents, not one document of raw {"text": ... lines
    as_text = tokenize_files(tmp_path / "y.jsonl", progress=False, format="text")  # the same bytes, read as text
    assert as_text.n_docs == 1 and as_text.n_tokens != upper.n_tokens  # another cache entry, not the JSONL parse
    assert tokenize_files(tmp_path / "y.jsonl", progress=False).n_docs == 5


# --- the file system says no ---------------------------------------------------------------------------------------
@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no run can write into: a read-only mount as root (root ignores permission bits), else mode 555."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder, "Permission denied; choose a folder you can write to, or fix its permissions"
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"running as root, and a read-only tmpfs could not be mounted: {mounted.stderr.decode().strip()}")
    try:
        yield folder, "Read-only file system; the file system is read-only; choose another folder"
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_one_line(corpus, read_only_folder, tmp_path):
    folder, message = read_only_folder
    process = cli_process("pretrain", *TINY, "--data", str(corpus), "--steps", "1", "--out", str(folder / "run"),
                          cache=tmp_path / "cache")
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, err
    assert err.strip().splitlines()[-1] == f"minimind-edu pretrain: error: {folder / 'run'}: {message}"


def test_every_expected_file_system_failure_says_what_to_do():
    assert os_error_advice(OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoints")) == (
        "runs/x/checkpoints: No space left on device; the disk is full; free some space or choose a folder on "
        "another disk")
    assert os_error_advice(OSError(errno.EROFS, "Read-only file system", "/mnt/ro")) == (
        "/mnt/ro: Read-only file system; the file system is read-only; choose another folder")
    assert os_error_advice(OSError(errno.EIO, "Input/output error")) == "Input/output error"


def test_a_corpus_too_short_for_validation_names_the_hold_out(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("\n\n".join(f"Story {i}: a cat sat on a mat and looked at the sun all day long." * 3
                                 for i in range(20)), encoding="utf-8")
    assert pretrain(short, tmp_path / "run", "--steps", "1", "--seq", "256") == 2
    error = one_line_error(capsys)
    assert "the validation hold-out (the last 2% of the training documents) is too short for one window of " \
           "seq_len + 1 = 257 tokens" in error and "--valid-data" in error


def test_a_checkpoint_without_its_tokenizer_says_to_copy_the_right_one(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain(corpus, out, "--steps", "1") == 0
    ckpt = latest_checkpoint(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "manifest.json"):
        (ckpt / name).unlink()
    capsys.readouterr()
    assert main(["generate", str(out), "--prompt", "Once"]) == 2
    error = one_line_error(capsys)
    assert f"{ckpt} has no tokenizer.json; copy in the tokenizer the model was trained with (its config names " \
           f"{default_tokenizer_dir()})" in error and "train-tokenizer" not in error

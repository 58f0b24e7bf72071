"""The browser harness itself, without a browser: where Chromium is missing the e2e tests say why."""
import json
import os
import subprocess
import sys

from jupyterlab_driver import REPO, error_outputs, find_chromium, long_output_lines, unexecuted_cells


def test_a_missing_chromium_gives_a_reason_naming_the_fix(monkeypatch):
    monkeypatch.setenv("MINIMIND_EDU_CHROMIUM", "/nonexistent/chromium")
    path, why = find_chromium()
    assert path is None and "/nonexistent/chromium" in why and "MINIMIND_EDU_CHROMIUM" in why


def test_without_chromium_the_browser_tests_are_skipped_with_the_reason(tmp_path):
    env = {**os.environ, "MINIMIND_EDU_CHROMIUM": str(tmp_path / "no-chromium")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs", "-q",
                          "tests/e2e/test_jupyterlab.py"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    # every browser test is skipped (one per notebook and solution notebook, plus the explorer's), none passes
    collected = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q",
                                "--collect-only", "tests/e2e/test_jupyterlab.py"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300).stdout
    n_tests = int(collected.strip().splitlines()[-1].split()[0])
    assert n_tests >= 8 and f"{n_tests} skipped" in run.stdout and " passed" not in run.stdout, run.stdout
    assert "no-chromium is not an executable file" in run.stdout, run.stdout


def test_saved_notebook_checks_find_errors_and_cells_that_did_not_run():
    nb = {"cells": [
        {"cell_type": "markdown", "source": "# hi"},
        {"cell_type": "code", "execution_count": 1, "outputs": [{"output_type": "stream", "text": "ok"}]},
        {"cell_type": "code", "execution_count": 2,
         "outputs": [{"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}]},
        {"cell_type": "code", "execution_count": None, "outputs": []},
    ]}
    assert error_outputs(json.loads(json.dumps(nb))) == ["[cell 2] ValueError: bad"]
    assert unexecuted_cells(nb) == [3]


def test_browser_redraw_benchmark_runs_and_writes_its_result(chromium, tmp_path):
    out = tmp_path / "browser_redraw.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "browser_redraw.py"), "--moves", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["moves"] == 2 and len(result["all_ms"]) == 2 and all(t > 0 for t in result["all_ms"])
    assert result["chromium"]


def test_long_output_lines_joins_stream_pieces_and_skips_pictures():
    nb = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": "x" * 60},
        {"output_type": "stream", "name": "stdout", "text": "y" * 60 + "\nshort\n"},  # one 120-char line
        {"output_type": "display_data", "data": {"image/png": "...", "text/plain": "<Figure " + "z" * 200}},
    ]}]}
    assert long_output_lines(nb, 110) == ["[cell 0] (120 columns) " + "x" * 60 + "..."]
    # A Chinese character takes two columns on screen: 56 of them are 112 columns, too wide; 55 are not.
    chinese = {"cells": [{"cell_type": "code", "outputs": [
        {"output_type": "stream", "name": "stdout", "text": "词" * 56 + "\n" + "元" * 55 + "\n"}]}]}
    assert long_output_lines(chinese, 110) == ["[cell 0] (112 columns) " + "词" * 56 + "..."]
    assert long_output_lines(nb, 120) == []


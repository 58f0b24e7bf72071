"""A run's metrics.jsonl read back and drawn."""
from __future__ import annotations

import json

import pytest

from minimind_edu.metrics import plot_metrics, read_metrics


def test_plot_metrics(tmp_path):
    records = [{"step": 1, "tokens": 1000, "loss": 8.0}, {"step": 2, "tokens": 2000, "loss": 7.0, "val_loss": 7.5}]
    ax = plot_metrics(records, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").exists()
    assert [line.get_label() for line in ax.get_lines()] == ["train loss", "validation loss"]


def test_read_metrics_names_a_broken_line(tmp_path):
    records = [{"step": 1, "tokens": 1000, "loss": 8.0}, {"step": 2, "tokens": 2000, "loss": 7.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    assert read_metrics(tmp_path) == records  # a run folder or the file itself; blank lines skipped
    assert read_metrics(tmp_path / "metrics.jsonl") == records
    (tmp_path / "metrics.jsonl").write_text(json.dumps(records[0]) + '\n{"step": 2, "tok\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2: not JSON"):
        read_metrics(tmp_path)

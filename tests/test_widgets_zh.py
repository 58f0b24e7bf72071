"""The Chinese edition's explorer and plots: the same numbers in other words, Chinese in matplotlib only where a
CJK font can draw it, and English (never boxes) where none can."""
from __future__ import annotations

import re
import warnings

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from minimind_edu import i18n  # noqa: E402
from minimind_edu.widgets import (  # noqa: E402
    ExplorerState,
    attention_text,
    draw,
    fit_text,
    generation_text,
    legend_html,
    memory_explorer,
)

CJK = re.compile(r"[\u4e00-\u9fff]")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def needs_cjk_font():
    if i18n.use_cjk_font() is None:
        pytest.skip("no CJK font on this machine (make browser installs fonts-wqy-microhei)")


def draws_without_boxes(fig):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "Glyph ... missing from font(s)" for each box it draws
        fig.canvas.draw()


def test_the_chinese_explorer_answers_its_sliders_in_chinese():
    ex = memory_explorer("tiny", lang="zh", gpu="rtx-4060", batch=2, seq_len=64)
    assert "放得下" in ex.fit_label.value and "最大可用批大小" in ex.fit_label.value
    assert ex.attention_label.value.startswith("注意力：") and "KV 缓存" in ex.generation_label.value
    assert "显存构成" in ex.legend.value and "激活值" in ex.legend.value
    assert ex.sliders["batch"].description == "批大小" and ex.sliders["checkpointing"].description == "梯度检查点"
    assert ex.measure_button.description == "实测这个配置"
    picture = ex.image.value
    ex.sliders["batch"].value = 256
    ex.sliders["seq_len"].value = 4096
    ex.sliders["layers"].value = 32
    ex.sliders["hidden"].value = 2048
    assert "放不下" in ex.fit_label.value and ex.image.value != picture
    for label in (ex.fit_label, ex.attention_label, ex.generation_label, ex.legend):
        assert CJK.search(label.value)
    ex.sliders["attention"].value = "naive"
    assert "二次增长" in ex.attention_label.value
    ex.sliders["gpus"].value = 8
    ex.sliders["strategy"].value = "fsdp"
    assert "每张 GPU（共 8 张，fsdp）" in ex.fit_label.value
    ex.measure_button.click()  # one process here: it says so, in Chinese
    assert ex.measured == [] and "GPU 数量设为 1" in ex.status.value


@pytest.mark.parametrize("state", [ExplorerState(), ExplorerState(gpu="rtx-4060", batch=64, seq_len=2048),
                                   ExplorerState(gpus=4, strategy="zero1", checkpointing=True, precision="fp32")])
def test_the_chinese_texts_hold_the_english_numbers(state):
    # one estimate, other words: the same numbers in the same order
    for text in (fit_text, generation_text):
        assert NUMBER.findall(text(state, lang="zh")) == NUMBER.findall(text(state))
    parts = {"weights": 1.0, "low_precision_weights": 0.25}
    assert NUMBER.findall(legend_html(parts, "zh")) == NUMBER.findall(legend_html(parts))
    assert "低精度权重副本 0.25" in legend_html(parts, "zh")
    assert fit_text(state) == fit_text(state, lang="en")  # the English text is the default


def test_the_explorer_and_its_pure_functions_refuse_an_unknown_language():
    with pytest.raises(ValueError, match="lang must be one of en, zh, got 'fr'"):
        memory_explorer("tiny", lang="fr")
    for text in (fit_text, attention_text, generation_text):
        with pytest.raises(ValueError, match="got 'fr'"):
            text(ExplorerState(preset="tiny"), lang="fr")
    with pytest.raises(ValueError, match="got 'fr'"):
        legend_html({"weights": 1.0}, lang="fr")


def test_the_chinese_picture_draws_chinese_without_missing_glyphs():
    needs_cjk_font()
    fig, data = draw(ExplorerState(preset="tiny"), lang="zh")  # with legends and the fit line as the title
    draws_without_boxes(fig)
    assert fig.axes[0].get_xlabel() == "批大小" and "放得下" in fig._suptitle.get_text()
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[:2] == ["已分配（估计）", "+ CUDA 额外开销（近似）"]
    assert data["fit_text"] == fig._suptitle.get_text()
    plt.close(fig)
    ex = memory_explorer(lang="zh")  # the explorer's picture: segment names beside the bar, no legends
    assert ex.figure.axes[3].get_title() == "当前配置的显存构成（GiB）"
    assert any(t.get_text().startswith("激活值 ") for t in ex.figure.axes[3].texts)
    draws_without_boxes(ex.figure)


def test_without_a_cjk_font_the_picture_is_english_and_the_browser_text_chinese(monkeypatch):
    monkeypatch.setattr(i18n, "cjk_font", lambda: None)
    fig, data = draw(ExplorerState(preset="tiny"), lang="zh")
    drawn = [fig._suptitle.get_text(), *(t.get_text() for ax in fig.axes for t in ax.texts)]
    drawn += [ax.get_xlabel() for ax in fig.axes] + [ax.get_title() for ax in fig.axes]
    drawn += [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert fig.axes[0].get_xlabel() == "batch size" and "fits on" in fig._suptitle.get_text()
    assert not any(CJK.search(text) for text in drawn)
    assert "放得下" in data["fit_text"]  # the label above the picture: the browser has Chinese fonts
    plt.close(fig)
    ex = memory_explorer("tiny", lang="zh")
    assert ex.figure.axes[0].get_xlabel() == "batch size" and "放得下" in ex.fit_label.value
    assert ex.figure.axes[3].get_title() == "breakdown at the current point (GiB)"


def test_live_loss_plot_metrics_and_baselines_in_chinese(monkeypatch):
    needs_cjk_font()
    from minimind_edu.baselines import Baselines, plot_baselines
    from minimind_edu.evaluate import LanguageEval
    from minimind_edu.metrics import plot_metrics
    from minimind_edu.pretrain import LiveLossPlot

    records = [{"step": 1, "tokens": 1000, "loss": 8.0, "tokens_per_s": 12345.0},
               {"step": 2, "tokens": 2000, "loss": 7.0, "val_loss": 7.5, "tokens_per_s": 23456.0}]
    live = LiveLossPlot(title="tiny", lang="zh")
    for r in records:
        live(r)
    assert live.ax.get_title() == "tiny  第 2 步  每秒 23,456 词元"
    assert [t.get_text() for t in live.ax.get_legend().get_texts()] == ["训练损失", "验证损失"]
    draws_without_boxes(live.fig)

    ax = plot_metrics(records, lang="zh")
    assert ax.get_xlabel() == "已训练的词元数（百万）" and ax.get_ylabel() == "交叉熵（nats/词元）"
    draws_without_boxes(ax.figure)
    plt.close(ax.figure)

    b = Baselines(uniform=8.0, uniform_bits_per_byte=3.0, unigram=6.0, unigram_bits_per_byte=2.5,
                  compressor_bits_per_byte=2.0, compressor="gzip", tokens=10, bytes=30, documents=1)
    trained = {"english": LanguageEval(loss=3.0, bits_per_byte=1.2, tokens=10, bytes=30, documents=1)}
    ax = plot_baselines({"english": b}, trained, lang="zh")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["均匀猜测", "一元模型（unigram）", "gzip",
                                                                  "训练后的模型"]
    assert ax.get_ylabel() == "每字节比特数（越低越好）" and ax.get_title() == "验证文本上的基线与训练后的模型"
    draws_without_boxes(ax.figure)
    plt.close(ax.figure)

    monkeypatch.setattr(i18n, "cjk_font", lambda: None)  # no CJK font: English, never boxes
    assert plot_metrics(records, lang="zh").get_xlabel() == "tokens seen (millions)"
    assert plot_baselines({"english": b}, lang="zh").get_title() == "validation text: baselines"
    live = LiveLossPlot(lang="zh")
    live(records[0])
    assert live.ax.get_title() == "step 1  12,345 tokens/s"
    with pytest.raises(ValueError, match="got 'fr'"):
        LiveLossPlot(lang="fr")
    with pytest.raises(ValueError, match="got 'fr'"):
        plot_metrics(records, lang="fr")
    with pytest.raises(ValueError, match="got 'fr'"):
        plot_baselines({"english": b}, lang="fr")
    plt.close("all")


def test_a_calibration_is_described_in_chinese_with_its_numbers(tmp_path, monkeypatch):
    import json
    from dataclasses import asdict

    from minimind_edu.memory_calibration import Calibration

    cal = Calibration("Fake GPU", (8, 9), "2.5.1", 512 * 2**20, 8 * 2**20, 0.1, "2025-01-02")
    assert cal.describe() == cal.describe("en") and cal.describe().startswith("calibrated on Fake GPU")
    assert cal.describe("zh").startswith("已在 Fake GPU 上实测校准")
    assert NUMBER.findall(cal.describe("zh")) == NUMBER.findall(cal.describe())
    with pytest.raises(ValueError, match="got 'fr'"):
        cal.describe("fr")
    # the explorer's attention line says where its CUDA overhead comes from, in either language
    path = tmp_path / "cal.json"
    path.write_text(json.dumps(asdict(cal)))
    monkeypatch.setenv("MINIMIND_EDU_CALIBRATION", str(path))
    state = ExplorerState(gpu="rtx-4090")
    assert attention_text(state).endswith("; CUDA overhead " + cal.describe())
    assert attention_text(state, lang="zh").endswith("；CUDA 额外开销" + cal.describe("zh"))


@pytest.mark.parametrize("kernel", ["naive", "math", "flash", "efficient"])
def test_each_attention_kernel_is_described_in_chinese(kernel):
    from minimind_edu.memory_kernels import KernelChoice

    choice = KernelChoice(kernel, grouped_kv=False)
    assert CJK.search(choice.describe("zh")) and choice.describe() == choice.describe("en")
    # quadratic or linear in T, in both languages
    assert ("二次增长" in choice.describe("zh")) == ("quadratic" in choice.describe()) == choice.quadratic

"""The memory explorer: sliders for batch, sequence length, layers, width, precision, attention, checkpointing
and GPU card, and plots of the estimated training memory, with measured points added on demand.

The widget is a thin view. :class:`ExplorerState` names a point; :func:`curves`, :func:`fit_text` and
:func:`breakdown` compute everything drawn from :func:`minimind_edu.memory.estimate`; :func:`draw` paints a
matplotlib figure from them (also used to render the README picture without Jupyter).

Everything takes ``lang="en"`` or ``lang="zh"``. Text the browser shows (the labels, the HTML legend, the
controls) is Chinese whenever ``lang="zh"``; text matplotlib draws goes through :func:`minimind_edu.i18n.plot_text`,
so it is Chinese only where a CJK font can draw it (English otherwise, never boxes). The numbers are the same in
both languages: one estimate, other words.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .i18n import check_language, plot_text
from .memory import GPU_PRESETS, GiB, MemoryEstimate, MiB, estimate, get_gpu, largest_batch
from .memory_inference import generation_memory, kv_cache_bytes
from .memory_measure import measure
from .model import ModelConfig, get_preset
from .sharding import STRATEGIES

if TYPE_CHECKING:  # for annotations only: matplotlib is imported inside the functions that draw
    from matplotlib.figure import Figure

BATCHES = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256]
SEQ_LENS = [32, 64, 128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096]
LAYERS = list(range(1, 33))
HIDDEN_SIZES = [64, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048]
GPU_COUNTS = [1, 2, 4, 8, 16]
BAR_TERMS = ["weights", "optimizer_state", "gradients", "low_precision_weights", "activations", "head",
             "transient", "overhead"]
# Chinese names of the bar's segments and of the step's phases (the English names are the keys)
TERMS_ZH = {"weights": "权重", "optimizer_state": "优化器状态", "gradients": "梯度",
            "low_precision_weights": "低精度权重副本", "activations": "激活值", "head": "输出头",
            "transient": "临时缓冲", "overhead": "CUDA 额外开销"}
PHASES_ZH = {"forward": "前向传播", "backward": "反向传播", "optimizer": "优化器更新"}


def term_name(name: str, lang: str = "en") -> str:
    """A breakdown segment's name as a legend shows it: "low precision weights", or "低精度权重副本"."""
    return TERMS_ZH.get(name, name) if check_language(lang) == "zh" else name.replace("_", " ")


@dataclass(frozen=True)
class ExplorerState:
    """One point of the explorer: a preset plus what the sliders change."""

    preset: str = "minimind2-small"
    batch: int = 16
    seq_len: int = 512
    layers: int = 8
    hidden: int = 512
    precision: str = "bf16"
    attention: str = "sdpa"
    checkpointing: bool = False
    gpu: str = "rtx-4090"
    gpus: int = 1  # data-parallel GPUs: every figure is per GPU
    strategy: str = "ddp"  # with gpus > 1: what each GPU keeps (ddp, zero1, fsdp)

    def config(self, **changes) -> ModelConfig:
        s = replace(self, **changes)
        base = get_preset(s.preset)  # the sequence-length sweep reaches 4096 tokens even for small presets
        return replace(get_preset(s.preset), num_layers=s.layers, hidden_size=s.hidden, intermediate_size=None,
                          attention=s.attention,
                          max_position_embeddings=max(base.max_position_embeddings, max(SEQ_LENS), s.seq_len))

    def estimate(self, **changes) -> MemoryEstimate:
        s = replace(self, **changes)
        return estimate(s.config(), s.batch, s.seq_len, precision=s.precision, checkpointing=s.checkpointing,
                        device="cuda", gpu=s.gpu, world_size=s.gpus, strategy=s.strategy)


def _axis_values(values: list[int], current: int) -> list[int]:
    return sorted(set(values) | {current})


def curves(state: ExplorerState) -> dict[str, dict[str, list]]:
    """For each swept axis: x values, estimated allocated peak and nvidia-smi total (GiB), and the current x."""
    out = {}
    for axis, field_name, values in (("batch", "batch", BATCHES), ("seq_len", "seq_len", SEQ_LENS),
                                     ("layers", "layers", LAYERS)):
        xs = _axis_values(values, getattr(state, field_name))
        ests = [state.estimate(**{field_name: x}) for x in xs]
        out[axis] = {"x": xs, "allocated": [e.peak_bytes / GiB for e in ests],
                     "total": [e.total_with_overhead / GiB for e in ests], "current": getattr(state, field_name)}
    return out


def breakdown(est: MemoryEstimate) -> dict[str, float]:
    """The stacked bar's segments in GiB (framework overhead as one segment)."""
    parts = {k: est.terms.get(k, 0) / GiB for k in BAR_TERMS if k != "overhead"}
    parts["weights"] += (est.terms["buffers"] + est.terms["batch"]) / GiB
    parts["overhead"] = sum(est.overhead.values()) / GiB
    return parts


def fit_text(state: ExplorerState, lang: str = "en") -> str:
    """'fits' / 'does not fit' on the card, with the largest batch that fits at this sequence length."""
    check_language(lang)
    card = get_gpu(state.gpu)
    est = state.estimate()
    best = largest_batch(state.config(), state.seq_len, card, precision=state.precision,
                         checkpointing=state.checkpointing, world_size=state.gpus, strategy=state.strategy)
    if lang == "zh":
        verdict = "放得下" if est.fits(card) else "放不下"
        per_gpu = f"，每张 GPU（共 {state.gpus} 张，{state.strategy}）" if state.gpus > 1 else ""
        return (f"批大小 {state.batch} × 序列长度 {state.seq_len}{per_gpu}：{est.total_with_overhead / GiB:.1f} GiB → "
                f"在 {card.name} 上{verdict}；最大可用批大小：{best}"
                f"（峰值出现在{PHASES_ZH.get(est.peak_phase, est.peak_phase)}阶段）")
    verdict = "fits" if est.fits(card) else "does NOT fit"
    per_gpu = f" per GPU of {state.gpus} ({state.strategy})" if state.gpus > 1 else ""
    return (f"batch {state.batch} x {state.seq_len}{per_gpu}: {est.total_with_overhead / GiB:.1f} GiB -> {verdict} on "
            f"{card.name}; largest batch that fits: {best} (peak in {est.peak_phase})")


def attention_text(state: ExplorerState, lang: str = "en") -> str:
    """Which attention kernel the estimate assumes runs, and where the CUDA overhead figure comes from (a line
    of its own: beside the fit line it ran past the right edge of a laptop's notebook)."""
    zh = check_language(lang) == "zh"
    est = state.estimate()
    calibrated = (("；CUDA 额外开销" if zh else "; CUDA overhead ") + est.calibrated_with.describe(lang)
                  if est.calibrated_with else "")
    return ("注意力：" if zh else "attention: ") + est.kernel_choice.describe(lang) + calibrated


def generation_text(state: ExplorerState, lang: str = "en") -> str:
    """Generation at this batch and context length, the weights in the slider's precision: the KV cache and the
    peak of the last decoding step (:mod:`minimind_edu.memory_inference`)."""
    check_language(lang)
    cfg = state.config()
    cache = kv_cache_bytes(cfg, state.batch, state.seq_len, state.precision)
    peak = generation_memory(cfg, state.batch, state.seq_len, state.precision)["total"]
    if lang == "zh":
        return (f"生成 {state.batch} × {state.seq_len} 个词元（{state.precision} 权重）：KV 缓存 "
                f"{cache / MiB:.1f} MiB，峰值 {peak / GiB:.2f} GiB"
                "（本课程用 torch.cat 拼接的缓存，拼接时同时存在两份）")
    return (f"generating {state.batch} x {state.seq_len} tokens ({state.precision} weights): KV cache "
            f"{cache / MiB:.1f} MiB, peak {peak / GiB:.2f} GiB (the course's torch.cat cache is held twice)")


AXES = (("batch", "batch size"), ("seq_len", "sequence length (tokens)"), ("layers", "layers"))
AXES_ZH = {"batch": "批大小", "seq_len": "序列长度（词元）", "layers": "层数"}


def draw(state: ExplorerState, fig: Figure | None = None, measured: list[tuple[ExplorerState, float]] | None = None,
         legends: bool = True, lang: str = "en") -> tuple[Figure, dict]:
    """Paint the four panels for ``state`` onto ``fig`` (a new figure if None); returns (fig, plot_data).

    ``legends=False`` is the explorer's picture: no matplotlib legends (a large share of the render time) and no
    title, because the explorer shows :func:`legend_html` and :func:`fit_text` as text above the picture."""
    check_language(lang)
    plot_text(lang, "", "")  # before any text is made: a CJK font becomes matplotlib's fallback where there is one
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    if fig is None:
        fig = plt.figure(figsize=(12, 7.5))
    fig.clear()
    axes = fig.subplots(2, 2)
    artists = {}
    for ax, (axis, label) in zip((axes[0, 0], axes[0, 1], axes[1, 0]), AXES):
        allocated, = ax.plot([], [], "-", color="C0", label=plot_text(lang, "allocated (estimate)", "已分配（估计）"))
        total, = ax.plot([], [], "--", color="C0", alpha=0.6,
                         label=plot_text(lang, "+ CUDA overhead (approx.)", "+ CUDA 额外开销（近似）"))
        current, = ax.plot([], [], "o", color="C3", ms=8, zorder=4, label=plot_text(lang, "current point", "当前配置"))
        # drawn over the current point: right after "measure this point" the two coincide
        measured_pts, = ax.plot([], [], "x", color="C2", ms=12, mew=2.5, zorder=5,
                                label=plot_text(lang, "measured", "实测"))
        name = get_gpu(state.gpu).name
        cap = ax.axhline(0, color="k", lw=1, label=plot_text(lang, f"{name} memory", f"{name} 显存"))
        if axis != "layers":
            # Linear axes on purpose: on a log x-axis a straight line (memory vs batch) looks exponential,
            # and telling "linear" from "quadratic" (memory vs sequence length) is the point of the plot.
            ax.xaxis.set_major_locator(MaxNLocator(6, integer=True))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set_xlabel(plot_text(lang, label, AXES_ZH[axis]))
        ax.set_ylabel("GiB")
        artists[axis] = (ax, allocated, total, current, measured_pts, cap)
    if legends:
        axes[0, 0].legend(fontsize=7, loc="upper left")
    artists["layers"][0].xaxis.set_major_locator(FixedLocator([1, 8, 16, 24, 32]))
    artists["bar"] = axes[1, 1]
    artists["legends"] = legends
    artists["title"] = fig.suptitle("", fontsize=10) if legends else None
    fig._memory_artists = artists  # the explorer updates these in place: much faster than rebuilding
    data = update(fig, state, measured, lang=lang)
    fig.tight_layout(rect=(0, 0, 1, 0.95 if legends else 1))  # once, with real ticks and labels in place
    return fig, data


def update(fig: Figure, state: ExplorerState, measured: list[tuple[ExplorerState, float]] | None = None,
           lang: str = "en") -> dict:
    """Put ``state``'s curves, marks and breakdown into a figure made by :func:`draw`; returns the plot data.

    The returned texts are in ``lang``; the figure's in ``lang`` where a CJK font can draw it, else English."""
    from matplotlib.ticker import MaxNLocator

    check_language(lang)
    drawn = plot_text(lang, "en", "zh")  # the language the figure is drawn in

    artists = fig._memory_artists
    data = curves(state)
    card = get_gpu(state.gpu)
    cap = card.memory_bytes / GiB
    for axis, _ in AXES:
        ax, allocated, total, current, measured_pts, cap_line = artists[axis]
        d = data[axis]
        allocated.set_data(d["x"], d["allocated"])
        total.set_data(d["x"], d["total"])
        i = d["x"].index(d["current"])
        current.set_data([d["current"]], [d["total"][i]])
        # a measured point belongs on this curve when every other slider agrees with the current state
        pts = [(getattr(o, axis), gib) for o, gib in measured or []
               if replace(o, **{axis: getattr(state, axis)}) == state]
        measured_pts.set_data([p[0] for p in pts], [p[1] for p in pts])
        cap_line.set_ydata([cap, cap])
        cap_line.set_label(card.name)
        span = max(d["x"]) - min(d["x"])
        ax.set_xlim(min(d["x"]) - 0.03 * span, max(d["x"]) + 0.03 * span)
        # 8% headroom over the dashed curve's top, so it does not run out of the frame; capped at 4 cards high
        ax.set_ylim(0, max(cap * 1.3, min(max(d["total"]) * 1.08, cap * 4)))
    parts = breakdown(state.estimate())
    bar = artists["bar"]
    bar.clear()
    bottom = 0.0
    for j, (name, gib) in enumerate(parts.items()):
        label = TERMS_ZH[name] if drawn == "zh" else name
        bar.bar([0], [gib], bottom=bottom, color=f"C{j}", label=f"{label} {gib:.2f}")
        bottom += gib
    bar.axhline(cap, color="k", lw=1)
    bar.set_xticks([])
    bar.set_ylabel("GiB")
    bar.set_xlim(-0.6, 2.2)
    top = max(bottom, cap) * 1.08
    bar.set_ylim(0, top)
    bar.yaxis.set_major_locator(MaxNLocator(5))
    if artists["legends"]:
        bar.legend(fontsize=7, loc="upper right")
    else:  # no legend: name the segments beside the bar, those tall enough for a line of text
        bar.text(2.15, cap, card.name, ha="right", va="bottom", fontsize=8)
        y = 0.0
        for name, gib in parts.items():
            if gib >= 0.06 * top:
                bar.text(0.48, y + gib / 2, f"{term_name(name, drawn)} {gib:.2f}", va="center", fontsize=8)
            y += gib
    bar.set_title(plot_text(lang, "breakdown at the current point (GiB)", "当前配置的显存构成（GiB）"), fontsize=9)
    text = fit_text(state, lang)
    if artists["title"] is not None:
        artists["title"].set_text(text if drawn == lang else fit_text(state))
    est = state.estimate()
    return {**data, "breakdown": parts, "capacity": cap, "fit_text": text, "kernel": est.kernel,
            "attention_text": attention_text(state, lang), "generation_text": generation_text(state, lang)}


def render_png(fig: Figure) -> bytes:
    """The figure as PNG bytes: one Agg draw and a fast PNG encoding (savefig would draw twice)."""
    from PIL import Image

    fig.canvas.draw()
    width, height = fig.canvas.get_width_height(physical=True)
    buf = io.BytesIO()
    Image.frombuffer("RGBA", (width, height), fig.canvas.buffer_rgba(), "raw", "RGBA", 0, 1).save(
        buf, format="png", compress_level=1)
    return buf.getvalue()


def legend_html(parts: dict[str, float], lang: str = "en") -> str:
    """What the plots' legends would say, as HTML: the line styles, then the breakdown in the bar's colours.

    Laid out as two wrapping lines, to sit above the picture: beside it, a narrow notebook squeezes it to an
    unreadable column (seen in JupyterLab, tests/e2e)."""
    import matplotlib
    from matplotlib.colors import to_hex

    check_language(lang)
    # to_hex: the colour cycle may hold RGB tuples (e.g. after a style sheet), which CSS does not understand
    colors = [to_hex(c) for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    items = " &nbsp; ".join(
        f"<span style='white-space:nowrap'><span style='color:{colors[j % len(colors)]}'>&#9632;</span> "
        f"{term_name(name, lang)} {gib:.2f}</span>"
        for j, (name, gib) in enumerate(parts.items())
    )
    if lang == "zh":
        return ("<div style='line-height:1.5'><small>实线：已分配显存（估计） &middot; "
                "虚线：再加上 CUDA 额外开销（近似） &middot; 红点：当前配置 &middot; 绿色 ×：实测值 &middot; "
                "黑线：这张显卡的显存</small><br>"
                f"<small><b>显存构成（GiB）：</b>{items}</small></div>")
    return ("<div style='line-height:1.5'><small>solid: allocated (estimate) &middot; dashed: + CUDA overhead "
            "(approx.) &middot; red dot: current point &middot; green x: measured &middot; black line: the card's "
            f"memory</small><br><small><b>breakdown (GiB):</b> {items}</small></div>")


# The explorer's controls and messages: the browser draws them, so they are Chinese whenever lang="zh".
EXPLORER_TEXT = {
    "en": {"batch": "batch", "seq_len": "seq len", "layers": "layers", "hidden": "hidden", "gpus": "GPUs",
           "precision": "precision", "attention": "attention", "checkpointing": "checkpointing", "gpu": "GPU",
           "strategy": "strategy", "measure": "measure this point", "measure_tooltip": "run real training steps here",
           "one_process": "measuring runs one process on this machine: set GPUs to 1 to measure",
           "measuring": "measuring...",
           "measured": "batch {batch} x {seq_len} measured on {device}: {gib:.3f} GiB allocated at the peak (estimate "
                       "{err:+.1%}; the fit line adds CUDA overhead)",
           "failed": "batch {batch} x {seq_len} measured on {device}: {error}"},
    "zh": {"batch": "批大小", "seq_len": "序列长度", "layers": "层数", "hidden": "隐藏维度", "gpus": "GPU 数量",
           "precision": "精度", "attention": "注意力", "checkpointing": "梯度检查点", "gpu": "显卡",
           "strategy": "并行策略", "measure": "实测这个配置", "measure_tooltip": "在本机真正跑几步训练，测出显存峰值",
           "one_process": "实测在本机只跑一个进程，测不出多卡中每张 GPU 的显存：请把 GPU 数量设为 1 再实测",
           "measuring": "正在实测……",
           "measured": "批大小 {batch} × 序列长度 {seq_len} 在 {device} 上实测：峰值时已分配 {gib:.3f} GiB（估计偏差 "
                       "{err:+.1%}；“放得下/放不下”那一行的数字另加了 CUDA 额外开销）",
           "failed": "批大小 {batch} × 序列长度 {seq_len} 在 {device} 上实测：{error}"},
}


class MemoryExplorer:
    """The widget. ``sliders`` (a dict), ``measure_button``, ``plot_data``, ``fit_label`` and ``measured``
    are public so that tests and notebooks can drive it without a browser. ``lang="zh"``: in Chinese."""

    def __init__(self, state: ExplorerState | None = None, measure_device: str | None = None, lang: str = "en"):
        import ipywidgets as w
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.lang = check_language(lang)
        self.text = t = EXPLORER_TEXT[lang]
        self.state = state or ExplorerState()
        self.measure_device = measure_device
        s = self.state
        opts = {"continuous_update": False}
        self.sliders = {
            "batch": w.SelectionSlider(options=_axis_values(BATCHES, s.batch), value=s.batch,
                                       description=t["batch"], **opts),
            "seq_len": w.SelectionSlider(options=_axis_values(SEQ_LENS, s.seq_len), value=s.seq_len,
                                         description=t["seq_len"], **opts),
            "layers": w.IntSlider(value=s.layers, min=1, max=32, description=t["layers"], **opts),
            "hidden": w.SelectionSlider(options=_axis_values(HIDDEN_SIZES, s.hidden), value=s.hidden,
                                        description=t["hidden"], **opts),
            "gpus": w.SelectionSlider(options=_axis_values(GPU_COUNTS, s.gpus), value=s.gpus,
                                      description=t["gpus"], **opts),
            "precision": w.Dropdown(options=["bf16", "fp16", "fp32"], value=s.precision,
                                    description=t["precision"]),
            # a dropdown, not toggle buttons: ToggleButtons puts its description on a line of its own
            "attention": w.Dropdown(options=["sdpa", "naive"], value=s.attention, description=t["attention"]),
            "checkpointing": w.Checkbox(value=s.checkpointing, description=t["checkpointing"]),
            "gpu": w.Dropdown(options=[(c.name, k) for k, c in GPU_PRESETS.items()], value=s.gpu,
                              description=t["gpu"]),
            "strategy": w.Dropdown(options=list(STRATEGIES), value=s.strategy, description=t["strategy"]),
        }
        self.measure_button = w.Button(description=t["measure"], tooltip=t["measure_tooltip"])
        self.fit_label = w.Label()
        self.attention_label = w.Label()
        self.generation_label = w.Label()
        self.status = w.Label()
        self.measured: list[tuple[ExplorerState, float]] = []
        # max_width: in a narrow notebook the picture shrinks to fit instead of being cut off
        self.image = w.Image(format="png", layout=w.Layout(max_width="100%", height="auto"))
        self.legend = w.HTML()
        # A bare Agg figure (not pyplot's): nothing is shown twice in a notebook, and we render it ourselves.
        self.figure = Figure(figsize=(12, 7.5), dpi=72)
        FigureCanvasAgg(self.figure)
        self.plot_data: dict = {}
        for slider in self.sliders.values():
            slider.observe(self._on_change, names="value")
        self.measure_button.on_click(self._on_measure)
        sliders = list(self.sliders.values())
        self.widget = w.VBox([w.HBox([w.VBox(sliders[:5]), w.VBox(sliders[5:])]),
                              w.HBox([self.measure_button, self.status]), self.fit_label,
                              self.attention_label, self.generation_label, self.legend,
                              self.image])
        self.redraw()

    def current_state(self) -> ExplorerState:
        return replace(self.state, **{k: sl.value for k, sl in self.sliders.items()})

    def redraw(self) -> None:
        self.state = self.current_state()
        if not hasattr(self.figure, "_memory_artists"):
            _, self.plot_data = draw(self.state, self.figure, self.measured, legends=False, lang=self.lang)
        else:
            self.plot_data = update(self.figure, self.state, self.measured, lang=self.lang)
        self.fit_label.value = self.plot_data["fit_text"]
        self.attention_label.value = self.plot_data["attention_text"]
        self.generation_label.value = self.plot_data["generation_text"]
        self.legend.value = legend_html(self.plot_data["breakdown"], self.lang)
        self.image.value = render_png(self.figure)

    def _on_change(self, _change) -> None:
        self.redraw()

    def _on_measure(self, _button=None) -> None:
        s = self.current_state()
        if s.gpus > 1:  # a measurement here is one process: it cannot show one GPU of several
            self.status.value = self.text["one_process"]
            return
        self.status.value = self.text["measuring"]
        m = measure(s.config(), s.batch, s.seq_len, precision=s.precision, checkpointing=s.checkpointing,
                    device=self.measure_device)
        if m.fits:
            self.measured.append((s, m.peak_bytes / GiB))
            predicted = estimate(s.config(), s.batch, s.seq_len, precision=s.precision,
                                 checkpointing=s.checkpointing, device=m.device).peak_bytes
            err = (predicted - m.peak_bytes) / m.peak_bytes
            # names its point: the sliders may move on while this line stays
            self.status.value = self.text["measured"].format(batch=s.batch, seq_len=s.seq_len, device=m.device,
                                                             gib=m.peak_bytes / GiB, err=err)
        else:
            self.status.value = self.text["failed"].format(batch=s.batch, seq_len=s.seq_len, device=m.device,
                                                           error=m.error)
        self.redraw()

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)


def memory_explorer(preset: str = "minimind2-small", lang: str = "en", **state) -> MemoryExplorer:
    """The explorer for ``preset`` (layers and hidden size start at the preset's); display it in a notebook.
    ``lang="zh"``: the Chinese edition's (labels, legend and messages in Chinese)."""
    check_language(lang)
    base = get_preset(preset)
    state = {"layers": base.num_layers, "hidden": base.hidden_size, "attention": base.attention, **state}
    return MemoryExplorer(ExplorerState(preset=preset, **state), lang=lang)

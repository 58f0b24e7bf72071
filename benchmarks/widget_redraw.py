"""How long one explorer redraw takes, split into its parts; also renders the README picture.

    python benchmarks/widget_redraw.py     # prints timings; writes docs/images/memory_explorer.png

A redraw = the estimate sweeps (curves) + updating the matplotlib artists + rendering the figure to PNG
for the Image widget. Timings are medians of 8 slider moves on the machine it runs on.
"""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from minimind_edu.widgets import ExplorerState, curves, draw, memory_explorer, render_png, update  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn, repeats: int = 8) -> float:
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t)
    return sorted(times)[repeats // 2] * 1e3


def main() -> None:
    state = ExplorerState(preset="minimind2-small", batch=32, seq_len=512, layers=12, gpu="rtx-4090")
    ex = memory_explorer("minimind2-small", gpu="rtx-4090")
    batches = (8, 16, 32, 64, 128, 16, 24, 48)
    t_curves = median_ms(lambda i: curves(state))
    t_update = median_ms(lambda i: update(ex.figure, ExplorerState(batch=batches[i])))
    t_png = median_ms(lambda i: render_png(ex.figure))
    t_total = median_ms(lambda i: setattr(ex.sliders["batch"], "value", batches[i]))  # the real callback
    print(f"estimate sweeps (curves):          {t_curves:7.1f} ms")
    print(f"  + update plot artists (update):  {t_update:7.1f} ms  (includes the sweeps)")
    print(f"PNG render of the figure:          {t_png:7.1f} ms")
    print(f"whole slider callback:             {t_total:7.1f} ms")
    fig, _ = draw(state)
    out = ROOT / "docs" / "images" / "memory_explorer.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""How long a learner waits for the memory explorer, in a real JupyterLab in headless Chromium: from an arrow key
on the batch slider to the new picture on screen (kernel round trip + estimate sweeps + PNG render + display).

    python benchmarks/browser_redraw.py [--moves 12]   # needs Chromium: `make browser`

Writes benchmarks/results/browser_redraw.json. Compare with benchmarks/widget_redraw.py, which times the
kernel side alone; the difference is what the browser and the widget protocol add.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from jupyterlab_driver import NotebookPage, Slider, find_chromium, launch_chromium, running_lab  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=12, help="slider steps to time (alternating right and left)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "browser_redraw.json")
    args = ap.parse_args()
    chromium, why_not = find_chromium()
    if chromium is None:
        sys.exit(f"browser_redraw: {why_not}")
    from playwright.sync_api import sync_playwright

    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(MINIMIND_EDU_FAST="1", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    with tempfile.TemporaryDirectory() as tmp, running_lab(Path(tmp), env) as lab, sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        nb = NotebookPage(page, lab, "04_memory.ipynb")
        nb.open()
        nb.run_all(10 * 60_000)
        out = page.locator(".jp-OutputArea-output").filter(has=page.locator("img.widget-image"))
        image = out.locator("img.widget-image")
        batch = Slider(page, out, "batch")
        batch.track.scroll_into_view_if_needed()
        times = []
        for i in range(args.moves):
            old = image.get_attribute("src")
            batch.handle.focus()
            t0 = time.perf_counter()
            page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
            # the new picture is on screen: a new src, and the browser has decoded it
            page.wait_for_function("([el, old]) => el.src !== old && el.complete && el.naturalWidth > 0",
                                   arg=[image.element_handle(), old], timeout=30_000, polling="raf")
            times.append((time.perf_counter() - t0) * 1e3)
        versions = {"chromium": browser.version}
        browser.close()
    result = {
        "what": "arrow key on the explorer's batch slider -> new picture displayed, JupyterLab in headless Chromium",
        "moves": args.moves, "median_ms": round(statistics.median(times), 1),
        "min_ms": round(min(times), 1), "max_ms": round(max(times), 1), "all_ms": [round(t, 1) for t in times],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (CPU only)",
        "kernel_threads": env["OMP_NUM_THREADS"], **versions,
    }
    out_path = args.out
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"slider move -> new picture: median {result['median_ms']} ms "
          f"(min {result['min_ms']}, max {result['max_ms']}) over {args.moves} moves; wrote {out_path}")


if __name__ == "__main__":
    main()

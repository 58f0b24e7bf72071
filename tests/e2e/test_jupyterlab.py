"""The course in a real JupyterLab in headless Chromium: every notebook runs to the end from the Run menu, and
the memory explorer answers a learner's slider moves and "measure" click with new text and a new picture.

nbval (the rest of `make test`) runs the same cells in a bare kernel; only a browser renders widgets, runs the
ipywidgets front end, and shows what a learner sees. Screenshots of each state go to test-artifacts/e2e/.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from jupyterlab_driver import (
    NOTEBOOKS,
    NotebookPage,
    Slider,
    check_cells,
    error_outputs,
    long_output_lines,
    png_pixels,
    unexecuted_cells,
)

FAST = bool(__import__("os").environ.get("MINIMIND_EDU_FAST"))
RUN_TIMEOUT_MS = (10 if FAST else 40) * 60_000
# A laptop-sized window: what fits here fits a learner's screen.
VIEWPORT = {"width": 1366, "height": 900}
# At that width, with the file browser open, JupyterLab shows about 118 characters of a line of code or output.
MAX_LINE = 110
MATPLOTLIB_GREEN = np.array([44, 160, 44])  # "C2", the measured points' colour


@pytest.fixture
def notebook(browser, lab):
    pages = []

    def open_notebook(name: str) -> NotebookPage:
        page = browser.new_page(viewport=VIEWPORT)
        nb = NotebookPage(page, lab, name)
        pages.append(nb)
        nb.open()
        return nb

    yield open_notebook
    for nb in pages:
        nb.page.close()
    lab.shutdown_kernels()  # each notebook's kernel goes with its test: memory stays flat over the module


def run_to_the_end(nb: NotebookPage) -> dict:
    """Run All from the menu, save from the browser, and check what was saved: every code cell ran, no
    traceback, every widget rendered."""
    seconds = nb.run_all(RUN_TIMEOUT_MS)
    saved = nb.save()
    assert error_outputs(saved) == [], f"{nb.name}: errors in the browser run"
    assert unexecuted_cells(saved) == [], f"{nb.name}: cells that did not run (Run All stopped early?)"
    assert long_output_lines(saved, MAX_LINE) == [], f"{nb.name}: output lines the browser breaks mid-word"
    assert nb.widget_errors() == [], f"{nb.name}: widgets JupyterLab could not display"
    page_errors = [m for m in nb.console if m.startswith("pageerror")]
    assert page_errors == [], f"{nb.name}: uncaught errors in the page: {page_errors}"
    print(f"{nb.name}: ran in the browser in {seconds:.1f} s")
    return saved


@pytest.mark.parametrize("name", sorted(str(p.relative_to(NOTEBOOKS)) for p in NOTEBOOKS.glob("**/[0-9][0-9]_*.ipynb")))
def test_notebook_runs_to_the_end_in_jupyterlab(notebook, artifacts, name):
    nb = notebook(name)
    nb.watch_images()
    saved = run_to_the_end(nb)
    nb.screenshot_pages(artifacts / "pages", Path(name).stem)
    # Check cells (the asserts tying a teaching cell to the library) stay collapsed in JupyterLab after Run All
    # and a save from the browser, and show no error.
    checks = check_cells(saved)
    assert all(saved["cells"][i]["metadata"].get("jupyter", {}).get("source_hidden") for i in checks), \
        f"{name}: JupyterLab saved a check cell expanded"
    if checks:
        views = nb.cell_views()
        assert set(checks) <= set(views), f"{name}: check cells never shown: {sorted(set(checks) - set(views))}"
        teaching = [i for i, c in enumerate(saved["cells"]) if c["cell_type"] == "code" and i not in checks]
        assert any(not views[i]["collapsed"] for i in teaching if i in views), "the collapse test sees nothing"
        expanded = [i for i in checks if not views[i]["collapsed"]]
        assert expanded == [], f"{name}: check cells shown expanded in JupyterLab: {expanded}"
        failing = [i for i in checks if views[i]["errors"] or saved["cells"][i].get("execution_count") is None]
        assert failing == [], f"{name}: check cells that did not run cleanly: {failing}"
        print(f"{name}: {len(checks)} check cells, all collapsed and clean")
    # plots reach the browser as pictures: plt.show() in a kernel started by JupyterLab, not a headless backend
    images = [o for c in saved["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    source = "".join("".join(c["source"]) for c in saved["cells"])
    assert images or "plt." not in source
    # A live loss curve is one picture redrawn in place as training logs (display handle updates): the cell
    # keeps a single image, and the browser showed more distinct pictures than the notebook ends with.
    live = [c for c in saved["cells"] if c["cell_type"] == "code" and "LiveLossPlot(" in "".join(c["source"])]
    for cell in live:
        assert sum("image/png" in o.get("data", {}) for o in cell["outputs"]) == 1, "live plot appended, not updated"
    if live:
        print(f"{name}: {nb.images_seen()} distinct pictures shown, {len(images)} in the saved notebook")
        assert nb.images_seen() >= len(images) + 2, (nb.images_seen(), len(images))


def green_pixels(png: bytes) -> int:
    """Pixels of the measured points' colour in the batch panel (the picture's top-left quarter; the
    breakdown bar, which also uses green, is bottom-right)."""
    px = png_pixels(png).astype(int)
    h, w, _ = px.shape
    quarter = px[: h // 2, : w // 2]
    return int((np.abs(quarter - MATPLOTLIB_GREEN).sum(axis=-1) < 60).sum())


def test_memory_explorer_answers_sliders_and_measure(notebook, artifacts):
    nb = notebook("04_memory.ipynb")
    run_to_the_end(nb)
    page = nb.page
    out = page.locator(".jp-OutputArea-output").filter(has=page.locator("img.widget-image"))
    assert out.count() == 1, "the explorer's output (a widget with a picture) is not on the page"
    image = out.locator("img.widget-image")
    fit = out.locator(".widget-label").filter(has_text="largest batch")
    button = out.get_by_role("button", name="measure this point")
    status = out.locator(".widget-hbox").filter(  # the label beside the button
        has=page.get_by_role("button", name="measure this point")).locator(".widget-label")
    out.scroll_into_view_if_needed()

    def largest_batch(text: str) -> int:
        return int(re.search(r"largest batch that fits: (\d+)", text).group(1))

    def wait_for_fit(pattern: str) -> str:
        page.wait_for_function("([el, p]) => new RegExp(p).test(el.textContent)",
                               arg=[fit.element_handle(), pattern], timeout=30_000)
        return fit.inner_text()

    def shot(name: str) -> bytes:
        page.wait_for_function("el => el.complete && el.naturalWidth > 0", arg=image.element_handle())
        nb.screenshot(artifacts / f"04_memory-explorer-{name}.png", out)
        return image.screenshot()

    # The state the notebook left: 12 layers, 16 x 512, RTX 4090.
    start_text = wait_for_fit(r"^batch 16 x 512: .* fits on RTX 4090")
    start_png = shot("1-start")
    layout = out.evaluate("""el => {
        const img = el.querySelector('img.widget-image').getBoundingClientRect();
        const html = el.querySelector('.widget-html').getBoundingClientRect();
        const box = el.getBoundingClientRect();
        const squares = [...el.querySelectorAll('.widget-html span span')].map(s => getComputedStyle(s).color);
        return {img_right: img.right, img_width: img.width, box_right: box.right, legend_width: html.width,
                squares};
    }""")
    # Layout regressions the kernel-only tests cannot see: the legend squeezed into a sliver beside the
    # picture, the picture cut off, the legend's colour keys all black (CSS cannot read RGB tuples).
    assert layout["img_right"] <= layout["box_right"] + 1 and layout["img_width"] > 600, layout
    assert layout["legend_width"] > 600, layout
    assert len(layout["squares"]) == 8 and len(set(layout["squares"])) == 8, layout["squares"]

    # 1. Drag the batch slider to the right with the mouse, then step to exactly 128 with the arrow keys.
    batch = Slider(page, out, "batch")
    batch.drag_to(0.9)  # fails unless the readout moves
    batch.set(128)
    text_128 = wait_for_fit(r"^batch 128 x 512: .* does NOT fit")
    png_128 = shot("2-batch-128")
    assert png_128 != start_png, "the picture did not change when the batch slider moved"
    assert largest_batch(text_128) == largest_batch(start_text)  # same sequence length: same largest batch
    # The README's picture: the whole JupyterLab window, the explorer's cell at the top, the window tall
    # enough to hold the cell (the state above: why 12 layers at batch 128 do not fit a 24 GB card).
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1200})
    out.evaluate("el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # let JupyterLab lay out the taller window
    page.screenshot(path=str(artifacts / "04_memory-explorer-jupyterlab.png"))
    page.set_viewport_size(VIEWPORT)

    # 2. Shorter sequences: more of them fit.
    seq = Slider(page, out, "seq len")
    seq.drag_to(0.0)
    seq.set(256)
    text_256 = wait_for_fit(r"^batch 128 x 256: ")
    png_256 = shot("3-seq-256")
    assert png_256 != png_128, "the picture did not change when the sequence-length slider moved"
    assert largest_batch(text_256) > largest_batch(text_128), (text_128, text_256)

    # 3. Measure a point small enough for a laptop CPU: batch 1 x 256 of the 12-layer model.
    batch.drag_to(0.0)
    wait_for_fit(r"^batch 1 x 256: ")
    before = shot("4-batch-1")
    assert green_pixels(before) == 0, "a measured point is drawn before anything was measured"
    button.click()
    page.wait_for_function("el => /measured on/.test(el.textContent)", arg=status.element_handle(),
                           timeout=120_000)
    status_text = status.inner_text()
    after = shot("5-measured")
    assert green_pixels(after) > 20, "the measured point did not appear on the batch plot"
    m = re.search(r"^batch 1 x 256 measured on cpu: ([\d.]+) GiB allocated at the peak \(estimate ([+-][\d.]+)%",
                  status_text)
    assert m, status_text
    assert abs(float(m.group(2))) <= 3.0, f"estimate vs measurement off by more than 3%: {status_text}"

    # 4. The other controls: a bigger card, then activation checkpointing, at 128 x 512 again.
    batch.set(128)
    seq.set(512)
    text_4090 = wait_for_fit(r"^batch 128 x 512: .* does NOT fit on RTX 4090")
    out.locator(".widget-dropdown").filter(has=page.locator("label:text-is('GPU')")).locator("select").select_option(
        label="H100 80GB")
    text_h100 = wait_for_fit(r"^batch 128 x 512: .* fits on H100 80GB")
    assert largest_batch(text_h100) > largest_batch(text_4090)
    out.get_by_role("checkbox", name="checkpointing").check()
    text_ckpt = wait_for_fit(r"^batch 128 x 512: [\d.]+ GiB -> fits on H100 80GB; largest batch that fits: (?!"
                             + str(largest_batch(text_h100)) + r"\b)")
    assert largest_batch(text_ckpt) > largest_batch(text_h100), (text_h100, text_ckpt)
    shot("6-h100-checkpointing")


def test_chinese_memory_explorer_speaks_chinese(notebook, artifacts):
    """The Chinese edition's explorer (memory_explorer(lang="zh")): Chinese controls and fit line, answering the
    keyboard like the English one; its screenshot is README.zh.md's picture."""
    nb = notebook("zh/04_memory.ipynb")
    run_to_the_end(nb)
    page = nb.page
    out = page.locator(".jp-OutputArea-output").filter(has=page.locator("img.widget-image"))
    assert out.count() == 1, "the explorer's output (a widget with a picture) is not on the page"
    fit = out.locator(".widget-label").filter(has_text="最大可用批大小")
    out.scroll_into_view_if_needed()

    def wait_for_fit(pattern: str) -> str:
        page.wait_for_function("([el, p]) => new RegExp(p).test(el.textContent)",
                               arg=[fit.element_handle(), pattern], timeout=30_000)
        return fit.inner_text()

    start = wait_for_fit(r"^批大小 16 × 序列长度 512：.*上放得下")
    batch = Slider(page, out, "批大小")
    batch.set(128)
    full = wait_for_fit(r"^批大小 128 × 序列长度 512：.*上放不下")
    assert re.search(r"最大可用批大小：(\d+)", full).group(1) == re.search(r"最大可用批大小：(\d+)", start).group(1)
    assert out.get_by_role("button", name="实测这个配置").count() == 1
    page.set_viewport_size({"width": VIEWPORT["width"], "height": 1200})
    out.evaluate("el => el.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)  # let JupyterLab lay out the taller window
    page.screenshot(path=str(artifacts / "04_memory-explorer-jupyterlab-zh.png"))
    page.set_viewport_size(VIEWPORT)

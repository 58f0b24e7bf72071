"""Drive the course as a learner meets it: a real JupyterLab server and headless Chromium (via Playwright).

Nothing here touches the committed notebooks: the server's root is a scratch folder holding copies, so what
the browser runs and saves (outputs included) stays out of the repository.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
# Debian's chromium talks to Google at start-up unless told not to; on a closed network that means a burst of
# refused connections and slow starts. These are the flags the machine's own probe uses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# JupyterLab settings for a quiet, reproducible session: no "get news?" pop-up over the notebook.
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"}}


def find_chromium() -> tuple[str | None, str]:
    """(path to a Chromium binary, or None; and why not). ``MINIMIND_EDU_CHROMIUM``, when set, is the only
    place looked at."""
    chosen = os.environ.get("MINIMIND_EDU_CHROMIUM")
    if chosen:
        if os.access(chosen, os.X_OK):
            return chosen, ""
        return None, f"MINIMIND_EDU_CHROMIUM={chosen} is not an executable file; point it at a Chromium binary"
    for path in filter(None, ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]):
        if os.access(path, os.X_OK):
            return path, ""
    return None, ("no Chromium found (looked at /usr/bin/chromium and PATH): install it with `make browser` "
                  "(Debian/Ubuntu: apt-get install chromium) or set MINIMIND_EDU_CHROMIUM=/path/to/chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterLab:
    """A JupyterLab server on a free localhost port with a random token, serving copies of the notebooks."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.root = self.workdir / "notebooks"
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env  # the server's (and so the kernels') environment; None: this process's
        self.log_path = self.workdir / "jupyterlab.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        shutil.copytree(NOTEBOOKS, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        settings = self.workdir / "lab-settings"
        for name, values in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(values))
        env = {**(self.extra_env or os.environ),
               # a private config and runtime: the learner's own Jupyter settings and kernels stay out of it
               "JUPYTER_CONFIG_DIR": str(self.workdir / "config"), "JUPYTER_RUNTIME_DIR": str(self.workdir / "runtime")}
        cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={self.workdir / 'workspaces'}",
               "--ServerApp.allow_root=True"]  # CI machines run as root
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {self.proc.returncode}:\n{self.log_text()}")
            try:
                self.api("status")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.3)
        raise TimeoutError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()

    def log_text(self, tail: int = 4000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def api(self, path: str) -> dict:
        req = urllib.request.Request(f"{self.url}/api/{path}", headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def saved_notebook(self, name: str) -> dict:
        """The notebook as JupyterLab last saved it (outputs included)."""
        return self.api(f"contents/{name}?content=1")["content"]

    def shutdown_kernels(self) -> None:
        for session in self.api("sessions"):
            req = urllib.request.Request(f"{self.url}/api/sessions/{session['id']}", method="DELETE",
                                         headers={"Authorization": f"token {self.token}"})
            urllib.request.urlopen(req, timeout=30).close()

    def lab_url(self, name: str) -> str:
        return f"{self.url}/lab/tree/{name}?token={self.token}&reset"  # ?reset: no restored layout


@contextmanager
def running_lab(workdir: Path, env: dict[str, str] | None = None) -> Iterator[JupyterLab]:
    lab = JupyterLab(workdir, env)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


def error_outputs(nb: dict) -> list[str]:
    """Every error output (an exception's traceback) in a saved notebook, as '[cell i] Name: value'."""
    return [f"[cell {i}] {o.get('ename')}: {o.get('evalue')}"
            for i, cell in enumerate(nb["cells"]) for o in cell.get("outputs", []) if o["output_type"] == "error"]


def screen_width(line: str) -> int:
    """Columns on screen: a Chinese character takes two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in line)


def long_output_lines(nb: dict, limit: int) -> list[str]:
    """Text output lines wider than ``limit`` columns, as '[cell i] (n chars) line...'. JupyterLab wraps
    such lines wherever they reach the edge, in the middle of words and numbers."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        streams: dict[str, str] = {}
        texts = []
        for o in cell.get("outputs", []):
            if o["output_type"] == "stream":  # one line can arrive as several stream messages
                streams[o["name"]] = streams.get(o["name"], "") + "".join(o["text"])
            elif o["output_type"] in ("execute_result", "display_data") and "text/html" not in o["data"] and not any(
                    k.startswith("image/") or "widget" in k for k in o["data"]):
                texts.append("".join(o["data"].get("text/plain", "")))
        found += [f"[cell {i}] ({screen_width(line)} columns) {line[:60]}..." for text in texts + list(streams.values())
                  for line in text.split("\n") if screen_width(line) > limit]
    return found


def check_cells(nb: dict) -> list[int]:
    """Indices of the cells tagged `check`: the asserts that tie a teaching cell to the library."""
    return [i for i, c in enumerate(nb["cells"]) if "check" in c.get("metadata", {}).get("tags", [])]


def unexecuted_cells(nb: dict) -> list[int]:
    """Code cells that did not run (no execution count), by index."""
    return [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and c.get("execution_count") is None]


class NotebookPage:
    """One notebook open in JupyterLab in a Playwright page, with the learner's actions as methods."""

    def __init__(self, page, lab: JupyterLab, name: str):
        self.page, self.lab, self.name = page, lab, name
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def open(self, timeout_ms: int = 120_000) -> None:
        self.page.goto(self.lab.lab_url(self.name))
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=timeout_ms)
        self.wait_kernel_idle(timeout_ms)

    def wait_kernel_idle(self, timeout_ms: int) -> None:
        """Wait for the status bar to say 'Python 3 (ipykernel) | Idle': the kernel is up and not busy.
        (The toolbar's execution indicator reads idle before the kernel has even started.)"""
        self.page.wait_for_function(
            "() => /\\|\\s*Idle/.test(document.querySelector('.jp-StatusBar-Widget')?.innerText ?? '')",
            timeout=timeout_ms, polling=250)

    def run_all(self, timeout_ms: int) -> float:
        """Run > Run All Cells, as a learner would, and wait until no cell is queued or running; returns seconds."""
        t0 = time.monotonic()
        self.page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        self.page.click("li[data-command='runmenu:run-all']")
        # A code prompt reads '[*]:' while queued or running and '[n]:' once done: wait for the run to start,
        # then for no '*' to be left.
        prompts = "[...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent)"
        self.page.wait_for_function(f"() => {prompts}.some(t => /\\[(\\*|\\d+)\\]/.test(t))", timeout=30_000)
        self.page.wait_for_function(f"() => !{prompts}.some(t => t.includes('*'))", timeout=timeout_ms, polling=500)
        self.wait_kernel_idle(timeout_ms)
        return time.monotonic() - t0

    def save(self) -> dict:
        """Save from the browser (Ctrl+S) and return the saved notebook as JupyterLab wrote it."""
        def modified() -> str:  # ?content=0: a stat, not a read of a file that may be half written
            return self.lab.api(f"contents/{self.name}?content=0")["last_modified"]

        before = modified()
        self.page.keyboard.press("Control+s")
        deadline = time.monotonic() + 60
        while modified() == before:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: saving from the browser did not write the file within 60 s")
            time.sleep(0.2)
        # Jupyter's "atomic" save writes the file in place (a backup beside it guards against crashes), so a read
        # during the write sees half a notebook: wait until the tab's unsaved-changes mark is gone, i.e. the
        # save request has returned.
        self.page.wait_for_function(
            "() => !document.querySelector('.lm-TabBar-tab.jp-mod-current.jp-mod-dirty')", timeout=60_000)
        return self.lab.saved_notebook(self.name)

    def watch_images(self) -> None:
        """Start recording every picture the page shows (each distinct <img> src), to tell a plot that is
        redrawn in place, like a live loss curve, from one drawn once."""
        self.page.evaluate("""() => {
            window.__imagesSeen = new Set();
            const note = n => { if (n.tagName === 'IMG' && n.src) window.__imagesSeen.add(n.src); };
            new MutationObserver(changes => { for (const c of changes) {
                if (c.type === 'attributes') note(c.target);
                for (const n of c.addedNodes)
                    if (n.querySelectorAll) { note(n); n.querySelectorAll('img').forEach(note); }
            } }).observe(document.body, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
        }""")

    def images_seen(self) -> int:
        return self.page.evaluate("() => window.__imagesSeen.size")

    def widget_errors(self) -> list[str]:
        """Widgets the front end could not render (e.g. a missing ipywidgets extension shows this text)."""
        texts = self.page.locator(".jp-OutputArea-output").all_inner_texts()
        return [t[:200] for t in texts if "Error displaying widget" in t or "Failed to load model class" in t]

    def cell_views(self, max_pages: int = 200) -> dict[int, dict]:
        """What the learner sees of each cell, by index, scrolling through the notebook (JupyterLab attaches only
        the cells near the view): whether its input is collapsed (the '...' placeholder shown, the editor not),
        and how many error or stderr outputs it shows."""
        scroller = self.page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").first
        height = scroller.evaluate("el => el.clientHeight")
        views: dict[int, dict] = {}
        top = 0
        for _ in range(max_pages):
            scroller.evaluate("(el, top) => { el.scrollTop = top; }", top)
            self.page.wait_for_timeout(150)  # let JupyterLab attach the cells now in view
            for view in self.page.evaluate("""() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Cell')]
                .filter(c => c.dataset.windowedListIndex !== undefined).map(c => {
                    const editor = c.querySelector('.jp-Cell-inputArea');
                    return {index: Number(c.dataset.windowedListIndex),
                            collapsed: !!c.querySelector('.jp-InputPlaceholder')
                                       && !(editor && editor.getBoundingClientRect().height > 0),
                            errors: c.querySelectorAll(
                                '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').length};
                })"""):
                views[view["index"]] = view
            if top >= scroller.evaluate("el => el.scrollHeight - el.clientHeight"):
                break
            top += int(height * 0.8)
        return views

    def screenshot_pages(self, folder: Path, stem: str, max_pages: int = 60) -> int:
        """Scroll the notebook from top to bottom, one screenshot per screenful (for people to look through)."""
        folder.mkdir(parents=True, exist_ok=True)
        scroller = self.page.locator(".jp-NotebookPanel .jp-WindowedPanel-outer").first
        height = scroller.evaluate("el => el.clientHeight")
        n, top = 0, 0
        while n < max_pages:
            scroller.evaluate("(el, top) => { el.scrollTop = top; }", top)
            self.page.wait_for_timeout(250)  # let JupyterLab attach the cells now in view
            self.page.screenshot(path=str(folder / f"{stem}-page-{n + 1:02d}.png"))
            n += 1
            top += int(height * 0.9)
            if top >= scroller.evaluate("el => el.scrollHeight - el.clientHeight") + int(height * 0.9):
                break
        return n

    def screenshot(self, path: Path, locator=None) -> bytes:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = locator if locator is not None else self.page
        return target.screenshot(path=str(path))


def launch_chromium(playwright, executable: str):
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)


def png_pixels(png: bytes):
    """A screenshot as an (H, W, 3) uint8 array."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class Slider:
    """An ipywidgets slider in the page, found by its description, moved with the mouse and the arrow keys."""

    def __init__(self, page, scope, description: str):
        self.page = page
        self.root = scope.locator(".widget-slider").filter(
            has=page.locator(f"label.widget-label:text-is('{description}')"))
        self.handle = self.root.locator(".noUi-handle")
        self.track = self.root.locator(".noUi-base")
        self.readout = self.root.locator(".widget-readout")

    def value(self) -> str:
        return self.readout.inner_text().strip()

    def drag_to(self, fraction: float) -> None:
        """Press the mouse on the handle, move it to ``fraction`` of the track, release (a learner's drag), and
        wait for the readout to change. A drag that starts while the page is still moving (the picture above
        re-laid out after a screenshot) presses beside the handle; it is tried once more on the settled page."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        before = self.value()
        for attempt in range(2):
            self.track.scroll_into_view_if_needed()  # the mouse only reaches what is on screen
            h, t = self._settled_boxes()
            self.page.mouse.move(h["x"] + h["width"] / 2, h["y"] + h["height"] / 2)
            self.page.mouse.down()
            self.page.mouse.move(t["x"] + fraction * t["width"], h["y"] + h["height"] / 2, steps=8)
            self.page.mouse.up()
            try:
                self.page.wait_for_function("([el, old]) => el.textContent.trim() !== old",
                                            arg=[self.readout.element_handle(), before], timeout=5_000)
                return
            except PlaywrightTimeout:
                if attempt:
                    raise AssertionError(
                        f"dragging the slider to {fraction:.0%} of its track left it at {before}") from None

    def _settled_boxes(self) -> tuple[dict, dict]:
        """The handle's and the track's boxes once two reads 100 ms apart agree (the layout has stopped)."""
        last = None
        for _ in range(50):
            boxes = (self.handle.bounding_box(), self.track.bounding_box())
            if boxes == last:
                return boxes
            last = boxes
            self.page.wait_for_timeout(100)
        raise AssertionError(f"the slider kept moving on the page for 5 s: {last}")

    def set(self, value: float, max_keys: int = 40) -> None:
        """Step to exactly ``value`` (a number) with the arrow keys, as a learner fine-tunes a slider."""
        for _ in range(max_keys):
            now = self.value()
            if float(now) == value:
                return
            self.handle.focus()
            self.page.keyboard.press("ArrowRight" if float(now) < value else "ArrowLeft")
            self.page.wait_for_function("([el, old]) => el.textContent.trim() !== old",
                                        arg=[self.readout.element_handle(), now], timeout=5_000)
        raise AssertionError(f"slider did not reach {value} in {max_keys} key presses (at {self.value()})")

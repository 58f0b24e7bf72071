"""A run's output folder belongs to one run at a time, and an earlier run in it is never overwritten by accident.

A learner who reuses ``--out`` by mistake, or starts the same command in two terminals, would otherwise get
two runs' records mixed in one ``metrics.jsonl`` and one run's checkpoints pruned by the other. So a run
holds a lock file in its folder while it writes (a second run is refused, naming the first), a new run into
a folder that holds an earlier run is refused unless it resumes it or overwrites it, and overwriting moves
the earlier run aside instead of deleting it.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import InvalidArgument, RunError

LOCK_NAME = ".lock"
RUN_FILES = ("checkpoints", "metrics.jsonl", "summary.json", "loss_curve.png")


def is_run_folder(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a training run's output (checkpoints or metrics)."""
    path = Path(path)
    return (path / "checkpoints").is_dir() or (path / "metrics.jsonl").is_file()


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """``out_dir`` as a Path, refused when it exists and is not a folder."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InvalidArgument("out", f"{out_dir}: is a file, not a folder; give a folder for the run's output")
    return out_dir


def prepare_run_folder(out_dir: str | os.PathLike, resume: bool, overwrite: bool) -> Path | None:
    """Make ``out_dir`` ready for a run; returns where an earlier run was moved, if one was.

    Resuming needs the earlier run; a new run needs an empty folder, or ``overwrite``, which moves the earlier
    run to ``<out_dir>.previous-<time>`` (nothing is deleted) before the new one starts.
    """
    out_dir = check_out_dir(out_dir)
    if not out_dir.exists():
        return None
    with RunLock(out_dir):  # a run still writing there is refused before anything is touched
        if resume or not is_run_folder(out_dir):
            return None
        if not overwrite:
            raise RunError(f"{out_dir} holds an earlier run; continue it with --resume, start afresh with "
                           "--overwrite (the earlier run is moved aside, not deleted), or choose another --out")
        aside = out_dir.with_name(f"{out_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        aside.mkdir()
        for name in RUN_FILES:
            if (out_dir / name).exists():
                os.replace(out_dir / name, aside / name)
        print(f"--overwrite: the earlier run in {out_dir} was moved to {aside}", file=sys.stderr)
        return aside


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc), so that a reused pid is not mistaken
    for the run that wrote a lock; None where /proc is not available."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _holder_alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process cannot be checked from here: assume it runs
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    started = holder.get("started")
    return started is None or _process_start(pid) in (None, started)


class RunLock:
    """Holds ``<out_dir>/.lock`` while a run writes there; ``with RunLock(out_dir):`` or acquire/release.

    The lock file names the process (pid, host, start time). A lock whose process is gone (a run killed with
    kill -9 leaves one) is taken over with a note; a live one makes :meth:`acquire` raise :class:`RunError`.
    """

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    holder = {}  # unreadable: written by a run killed mid-write
                if _holder_alive(holder):
                    raise RunError(f"{self.path.parent} is in use by another run (pid {holder.get('pid')} on "
                                   f"{holder.get('host')}, since {holder.get('since')}); wait for it to finish, "
                                   "or choose another --out") from None
                print(f"note: {self.path.parent}: taking over the lock of a run that is no longer running "
                      f"(pid {holder.get('pid')})", file=sys.stderr)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self.held = True
            return self
        raise RunError(f"{self.path}: could not take the lock; remove the file if no run is using the folder")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""Launching torchrun from tests, one launch at a time on this machine.

Two ``--standalone`` launches started at once (two pytest-xdist workers) can pick the same free port and join
each other's gloo group; every test that starts torchrun takes this lock first (tests/test_sharding.py too).
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
import tempfile
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "minimind_edu_torchrun.lock"


def run_torchrun(args: list[str], nproc: int = 2, **kwargs) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run --standalone --nproc_per_node nproc *args``, under the lock."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args]
    with open(LOCK, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        return subprocess.run(cmd, **kwargs)

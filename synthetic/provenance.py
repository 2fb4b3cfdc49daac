"""Where and when a record or benchmark was produced: the commit, the UTC time, the device and torch version.
Also importable from :mod:`synthetic.results`."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Dict

__all__ = ["git_commit", "utc_now", "environment"]


def git_commit(root=None) -> str:
    """``$GIT_COMMIT`` when set (a copy of the tree whose .git is missing or stale, e.g. on a GPU machine),
    else the repository's short commit, else ``"unknown"``."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    root = root or Path(__file__).resolve().parent.parent
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                           timeout=10).stdout.strip()
    except Exception:
        c = ""
    return c or "unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (records carry the date they were produced)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now_us() -> str:
    """The current UTC time, ISO 8601 to the microsecond (a sweep record's key: sweeps may end in one second)."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def environment() -> Dict[str, str]:
    """Device name, torch version, commit and UTC date for records and benchmarks."""
    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "torch": torch.__version__, "commit": git_commit(),
            "date": utc_now()}

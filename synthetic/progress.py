"""Progress bars for long loops (sweeps, training): tqdm, written to stderr.

One thin wrapper so every loop looks the same: ``tqdm.auto`` (a widget in notebooks, a text bar in a
terminal), at most one refresh per ``min_interval`` seconds, and silent when the stream is not a
terminal (tqdm's ``disable=None``), so CI logs and redirected output stay clean.
"""

from __future__ import annotations

import sys
from typing import Iterable, Optional, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(it: Iterable[T], total: Optional[int] = None, desc: str = "", min_interval: float = 1.0,
             stream=None, enabled: bool = True) -> "tqdm[T]":
    """``tqdm(it)`` on stderr (or ``stream``); shown only when that stream is a terminal and ``enabled``."""
    return tqdm(it, total=total, desc=desc, mininterval=min_interval, file=stream or sys.stderr,
                disable=None if enabled else True, dynamic_ncols=True)

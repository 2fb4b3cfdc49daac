"""A dependency-free progress bar for long loops (sweeps, training), written to stderr.

Prints at most every ``min_interval`` seconds and always at the end; falls back to plain lines when
stderr is not a terminal (CI logs stay readable).
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], total: Optional[int] = None, desc: str = "", min_interval: float = 1.0,
             stream=None, enabled: bool = True) -> Iterator[T]:
    stream = stream or sys.stderr
    total = total if total is not None else (len(it) if hasattr(it, "__len__") else None)
    tty = hasattr(stream, "isatty") and stream.isatty()
    start = last = time.monotonic()
    i = 0

    def show(final: bool = False) -> None:
        el = time.monotonic() - start
        if total:
            frac = i / total
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            eta = el / i * (total - i) if i else float("nan")
            msg = f"{desc} [{bar}] {i}/{total} {el:.0f}s elapsed, ~{eta:.0f}s left"
        else:
            msg = f"{desc} {i} done, {el:.0f}s elapsed"
        stream.write(("\r" + msg + ("\n" if final else "")) if tty else msg + "\n")
        stream.flush()

    for item in it:
        yield item
        i += 1
        now = time.monotonic()
        if enabled and now - last >= min_interval and (total is None or i < total):
            show()
            last = now
    if enabled:
        show(final=True)

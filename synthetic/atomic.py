"""Files written safely: the project's one atomic-write helper, durable line appends, and the one-writer lock of a
results file. Standard library only, so ``theory/`` and ``scripts/`` use it too.

- :func:`atomic_write(path, data) <atomic_write>`: ``data`` (str, bytes, or a callable ``write(tmp_path)``, e.g. a
  figure's ``savefig``) goes to a temporary file in the same folder, is fsynced and ``os.replace``\\ d over ``path``:
  a reader (or a kill) sees the old file or the new one, never a half-written one. The file gets the umask's usual
  mode (not ``mkstemp``'s 0600). :func:`write_json_atomic` is it for JSON.
- :func:`append_durably(path, text) <append_durably>`: one ``write`` to the end of the file (``O_APPEND``), then
  fsync: a kill leaves at most one torn last line, never a changed earlier one.
- :class:`FileLock(path) <FileLock>`: one writer per file. The lock is ``<path>.lock``, held with ``flock`` (the
  kernel releases it when its process dies) and naming its holder in one JSON line (``pid``, ``host``, ``start``,
  ``argv``). A second process gets :class:`LockHeld` (its message names the holder) or, with ``wait=True``, waits.
  A lock file left by a process that died (no flock on it) is taken over with a message naming the dead holder.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

__all__ = ["atomic_write", "write_json_atomic", "append_durably", "FileLock", "LockHeld", "lock_path"]


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def atomic_write(path, data: Union[str, bytes, Callable[[str], Any]]) -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring); creates the parent folder."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results and figures are data to share
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path, data, indent: Optional[int] = 1) -> None:
    """``data`` as strict JSON (no NaN) with a final newline, written by :func:`atomic_write`."""
    atomic_write(path, json.dumps(data, indent=indent, allow_nan=False) + "\n")


def append_durably(path, text: str) -> None:
    """Append ``text`` to ``path`` in one ``write`` (``O_APPEND``; created with the umask's mode), then fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        data = text.encode()
        n = os.write(fd, data)
        while n < len(data):  # a short write (a signal, a full disk) continues where it stopped
            n += os.write(fd, data[n:])
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------- lock
class LockHeld(RuntimeError):
    """Another live process holds the lock; the message names it (pid, host, start time) and the way out."""


def lock_path(path) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".lock")


def _describe(holder: Dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('start', '?')}"
            + (f" ({holder['argv']})" if holder.get("argv") else ""))


def _read_holder(fd: int) -> Optional[Dict[str, Any]]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        raw += chunk
    if not raw.strip():
        return None
    try:
        h = json.loads(raw.decode(errors="replace"))
        return h if isinstance(h, dict) else {"raw": raw[:200].decode(errors="replace")}
    except ValueError:
        return {"raw": raw[:200].decode(errors="replace")}


class FileLock:
    """One writer per ``path`` (see the module docstring). A context manager; re-entrant within one process.

    wait: block until the holder releases it (printing who is waited for once) instead of raising
    :class:`LockHeld`. log: where the take-over of a stale lock and the waiting are reported (stderr).
    """

    _held: Dict[str, int] = {}  # lock path -> depth, this process

    def __init__(self, path, wait: bool = False, log: Callable[[str], None] = None):
        self.path = Path(path)
        self.lock = lock_path(self.path)
        self.wait = wait
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self.fd: Optional[int] = None

    def acquire(self) -> "FileLock":
        import fcntl

        key = str(self.lock.resolve())
        if FileLock._held.get(key):
            FileLock._held[key] += 1
            return self
        self.lock.parent.mkdir(parents=True, exist_ok=True)
        told = False
        while True:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd) or {}
                os.close(fd)
                msg = (f"{self.path} is being written by another process: {_describe(holder)}; only one process "
                       "writes a results file")
                if not self.wait:
                    raise LockHeld(msg + " (wait for it: SYNTHETIC_LOCK=wait, or pass another --out)") from None
                if not told:
                    self.log(f"note: {msg}; waiting for it (SYNTHETIC_LOCK=wait)")
                    told = True
                time.sleep(0.2)
                continue
            # the lock file may have been removed (released) between our open and our flock: retry on the new one
            try:
                same = os.stat(self.lock).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        old = _read_holder(fd)
        if old is not None:  # a holder that died without releasing (killed): its flock went with it
            self.log(f"note: {self.path}: took over the stale lock of {_describe(old)}, which is no longer running")
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "start": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "argv": " ".join(sys.argv)[:300]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self.fd = fd
        FileLock._held[key] = 1
        return self

    def release(self) -> None:
        key = str(self.lock.resolve())
        depth = FileLock._held.get(key, 0)
        if depth > 1:
            FileLock._held[key] = depth - 1
            return
        FileLock._held.pop(key, None)
        if self.fd is None:
            return
        try:
            os.unlink(self.lock)  # while still held: a waiter that opened the old file retries on a new one
        except FileNotFoundError:
            pass
        os.close(self.fd)  # releases the flock
        self.fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

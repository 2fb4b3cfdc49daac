"""What a GPU queue call brings back (:mod:`synthetic.gpu_queue`): the files it changed under ``figures/`` (a
snapshot before, the changed files after), packed with its logs into one archive whose paths are the repository's,
and the results files it changed kept under ``out/gpu_queue_state/`` on a warm machine so the next call, which
starts from a fresh copy of the caller's tree, folds their records in first.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent


def snapshot(folder: Path, base: Path = ROOT) -> Dict[str, Tuple[int, int]]:
    """(mtime, size) of every file under ``folder``, keyed by its path relative to ``base``."""
    return {str(p.relative_to(base)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def changed_since(before: Dict[str, Tuple[int, int]], folder: Path = ROOT / "figures", base: Path = ROOT) -> List[str]:
    """Paths (relative to ``base``) of the files under ``folder`` that are new or changed since ``before``; a
    results file's lock (``*.lock``, left behind by a shard killed at the deadline) is no result and is left out."""
    return sorted(k for k, v in snapshot(folder, base).items() if before.get(k) != v and not k.endswith(".lock"))


def pack(out: Path, before: Dict[str, Tuple[int, int]], logs: Path, folder: Path = ROOT / "figures",
         base: Path = ROOT, quiet: bool = False) -> Path:
    """One archive of every file under ``folder`` that changed since ``before`` (paths relative to ``base``, the
    repository root), plus the logs as notes/gpu_logs/gpu_queue_<date>/. Written to a temporary name and renamed,
    so a call killed while packing leaves the previous archive whole."""
    changed = changed_since(before, folder, base)
    stamp = time.strftime("%Y-%m-%d_%H%M", time.gmtime())
    out.mkdir(parents=True, exist_ok=True)
    path, tmp = out / "gpu_queue.tgz", out / "gpu_queue.tgz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for k in changed:
            tar.add(base / k, arcname=k)
        for f in sorted(logs.glob("*.log")):
            tar.add(f, arcname=f"notes/gpu_logs/gpu_queue_{stamp}/{f.name}")
    os.replace(tmp, path)
    shutil.copy(logs / "gpu_queue.log", out / "gpu_queue.log")
    if not quiet:
        print(f"packed {len(changed)} changed results/figure files and the logs into {path}")
    return path


STATE = ROOT / "out" / "gpu_queue_state"  # ignored: kept on a warm device between calls


def save_state(before: Dict[str, Tuple[int, int]], folder: Path = ROOT / "figures", base: Path = ROOT,
               state: Path = STATE) -> List[str]:
    """Copy every results file (``*.jsonl``) under ``folder`` that changed since ``before`` to ``state`` (same path
    relative to ``base``), for the next call on this machine. Returns the relative paths."""
    changed = [k for k in changed_since(before, folder, base) if k.endswith(".jsonl")]
    for k in changed:
        (state / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / k, state / k)
    return changed


def restore_state(log, base: Path = ROOT, state: Path = STATE) -> int:
    """Fold into ``base``'s results files the records an earlier call on this machine kept under ``state`` and
    they lack (by run key, under each file's lock). Returns the number of records added."""
    from synthetic.results import ResultsFile

    added = 0
    for kept in sorted(state.rglob("*.jsonl")) if state.is_dir() else []:
        main = ResultsFile(base / kept.relative_to(state))
        with main.lock():
            new = main.extend(r for r in ResultsFile(kept).load() if "key" in r)
        if new:
            log(f"restored {new} records of an earlier call on this machine into {kept.relative_to(state)}")
        added += new
    return added

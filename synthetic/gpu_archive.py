"""What a GPU queue call brings back (:mod:`synthetic.gpu_queue`): the files it changed under ``figures/`` (a
snapshot before, the changed files after), packed with its logs into one archive whose paths are the repository's,
and the results files it changed kept under ``out/gpu_queue_state/`` on a warm machine so the next call, which
starts from a fresh copy of the caller's tree, folds their records in first; and, back home, :func:`land`
(``python -m synthetic.gpu_queue --land``): the archives brought into the repository without losing a record.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from synthetic.atomic import atomic_write

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
    relative to ``base``), for the next call on this machine, and drop the kept files whose file under ``base`` is
    gone (shard files merged since). Returns the relative paths copied."""
    changed = [k for k in changed_since(before, folder, base) if k.endswith(".jsonl")]
    for k in changed:
        (state / k).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(base / k, state / k)
    # a kept file whose file here is gone is a shard file merged since (its records are in the results file): drop
    # it, or the next call would bring it back beside the results file (2026-12-07: 32 such files in an archive)
    for kept in sorted(state.rglob("*.jsonl")) if state.is_dir() else []:
        if not (base / kept.relative_to(state)).exists():
            kept.unlink()
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


# ------------------------------------------------------------------------------------------------ landing
LANDABLE = ("figures/", "notes/gpu_logs/")  # where a queue archive may write in the repository


class LandError(ValueError):
    """An archive that cannot be landed (one line naming the archive, the member and the rule); nothing written."""


def read_archive(path: Path) -> Dict[str, bytes]:
    """The files of a queue archive by repository path, checked before anything is written: a gzip tar of regular
    files, each a relative path under :data:`LANDABLE` without ``..``, no lock file, no path twice."""
    path = Path(path)
    if not path.is_file():
        why = "a folder, not an archive (give its gpu_queue.tgz)" if path.is_dir() else "no such file"
        raise LandError(f"--land: {path}: {why}")
    try:
        with tarfile.open(path, "r:gz") as tar:
            files: Dict[str, bytes] = {}
            for m in tar.getmembers():
                name = m.name
                parts = Path(name).parts
                if m.isdir():
                    continue
                if not m.isfile():
                    raise LandError(f"--land: {path}: {name!r} is not a regular file (links and devices are refused)")
                if Path(name).is_absolute() or ".." in parts or not name.startswith(LANDABLE):
                    raise LandError(f"--land: {path}: {name!r} is outside {' and '.join(LANDABLE)} (an archive of "
                                    "python -m synthetic.gpu_queue writes nowhere else)")
                if name.endswith(".lock"):
                    raise LandError(f"--land: {path}: {name!r} is a lock file, not a result")
                if name in files:
                    raise LandError(f"--land: {path}: {name!r} appears twice")
                files[name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise LandError(f"--land: {path}: not a readable .tgz archive ({type(e).__name__}: {e})") from None
    return files


def _parse_results(rel: str, data: bytes, scratch: Path):
    """The records of one archived results file (validated as :class:`synthetic.results.ResultsFile` reads them,
    under its own name so old-format hints apply), or :class:`LandError`."""
    from synthetic.results import ResultsFile, ResultsFileError

    p = scratch / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    try:
        return ResultsFile(p, log=lambda s: None).read()
    except ResultsFileError as e:
        raise LandError(f"--land: {str(e).replace(str(scratch) + os.sep, '')}") from None


def _land_results(rel: str, data: bytes, recs, base: Path) -> str:
    """Bring one archived results file into ``base``: the archive's bytes where they extend the file here (the
    usual case: the device started from this commit), else the archive's records whose run key is new here,
    appended (the file here gained records the device did not have: none is dropped). Under the file's lock."""
    from synthetic.results import ResultsFile

    target = base / rel
    rf = ResultsFile(target, log=lambda s: None)
    clean = data[:len(data) - recs.torn] if recs.torn else data
    torn = f"; a torn last line ({recs.torn} bytes) left out" if recs.torn else ""
    with rf.lock():
        old = target.read_bytes() if target.exists() else None
        if old == clean:
            return f"unchanged ({len(recs)} records){torn}"
        if old is None and rf.source() is None:
            atomic_write(target, clean)
            return f"new, {len(recs)} records{torn}"
        if old is not None and clean.startswith(old):
            n_old = len(rf.read())
            atomic_write(target, clean)
            return f"+{len(recs) - n_old} records ({n_old} -> {len(recs)}; the archive extends the file){torn}"
        here = {r["key"]: r for r in rf.read()}
        differ = sum(1 for r in recs if r["key"] in here and r != here[r["key"]])
        lacks = len(here.keys() - {r["key"] for r in recs})
        added = rf.extend(recs)
        return (f"+{added} records merged by run key (the archive does not extend the file here: {lacks} records "
                f"here are not in it, kept; {differ} it holds differently, the ones here kept){torn}")


def land(archives: Sequence[Path], base: Path = ROOT, log=print, dry_run: bool = False) -> Dict[str, List[str]]:
    """Bring queue archives (:func:`pack`) home into ``base``, in the order given (a later call's archive after an
    earlier one's): every archive is read and every results file in it validated before anything is written
    (:class:`LandError` otherwise); results files (``*.jsonl``) never lose a record here (:func:`_land_results`);
    figures, their data and the logs replace the files here (atomically); shard files an archive brings are merged
    into their results file (:func:`synthetic.parallel.merge_shards`). Returns ``{path: [what was done]}``, one
    entry per archive that holds the file, in the order given.
    ``dry_run``: the same, done on a scratch copy of the files concerned; ``base`` is left as it is."""
    import tempfile

    from synthetic.parallel import merge_shards, shard_files, shard_main

    contents = [(Path(a), read_archive(Path(a))) for a in archives]
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="land-dry-run.") as scratch:
            for rel in {rel for _, files in contents for rel in files}:
                here = base / rel
                kin = [here.with_suffix(".json"), *shard_files(here)] if rel.endswith(".jsonl") else []
                for p in [here, *kin]:  # a results file's old-format predecessor and shard files count too
                    if p.is_file():
                        (Path(scratch) / p.relative_to(base)).parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(p, Path(scratch) / p.relative_to(base))
            return land(archives, Path(scratch), log)
    with tempfile.TemporaryDirectory(prefix="land.") as scratch:
        parsed = {(str(a), rel): _parse_results(rel, data, Path(scratch) / str(i))
                  for i, (a, files) in enumerate(contents) for rel, data in files.items() if rel.endswith(".jsonl")}
    done: Dict[str, List[str]] = {}
    shards = set()
    for n, (a, files) in enumerate(contents, 1):
        for rel, data in sorted(files.items()):
            if rel.endswith(".jsonl"):
                what = _land_results(rel, data, parsed[(str(a), rel)], base)
                results = shard_main(rel)
                if results is not None:
                    shards.add(results)
            else:
                target = base / rel
                old = target.read_bytes() if target.is_file() else None
                what = "unchanged" if old == data else ("replaced" if old is not None else "new")
                if old != data:
                    atomic_write(target, data)
            done.setdefault(rel, []).append(what)
            log(f"  {rel}: {what}" + (f" (archive {n})" if len(contents) > 1 else ""))
    for main in sorted(shards):  # repository-relative paths
        if shard_files(base / main):
            merge_shards(base / main, log=lambda s: log("  " + s.replace(str(base) + os.sep, "")))
    return done

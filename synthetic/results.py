"""Results files: run keys, append-only resumable files, and the records a summary uses (Galim et al., ICML 2025,
Sec. 6 figures). What is computed from the records (best-of-grid, the adaptive learning-rate grid) is in
:mod:`synthetic.grid`, the records' provenance (commit, date, device) in :mod:`synthetic.provenance`; both are
importable from here too.

Used by :mod:`synthetic.runner` (the one sweep loop) and every experiment's summary. Nothing here knows about a
particular model; a *run* is a dict of plain JSON values (schema: :mod:`synthetic.records`).

API
---
- :func:`run_key(config) <run_key>` -> str: a canonical, order-independent key of a run's
  identifying config (a dict of JSON values, e.g. ``{"method": "SDT", "budget": {...}, "lr": 1e-3,
  "seed": 0}``). Two dicts with equal content give the same key.
- :class:`ResultsFile(path) <ResultsFile>`: run records on disk, one JSON object per line (JSON Lines), append-only:
  ``.load()`` -> list of records (validated: a broken line or a record without its fields is a
  :class:`ResultsFileError` naming the file and line; a torn last line from a kill is dropped with a note);
  ``.completed_keys()``; ``.append(record)`` / ``.extend(records)`` append the records whose key is new in one
  write, fsynced (never a whole-file rewrite); ``.lock()``: the file's one-writer lock
  (:class:`synthetic.atomic.FileLock`; the runner holds it for a whole sweep). Old files (one JSON list) still load.
  Records must carry a ``"key"`` (use :func:`run_key`).
- :func:`one_configuration(records, fingerprint, want) <one_configuration>`: the records of one configuration (a
  summary never mixes configurations); :func:`exit_error`: a one-line user-facing failure, exit status 2.
- From :mod:`synthetic.grid`: :func:`is_diverged`, :func:`best_of_grid`, :class:`LrPolicy`, :func:`lr_edge`,
  :func:`lr_extension_plan`, :func:`edge_label`.
- From :mod:`synthetic.provenance`: :func:`environment()`: ``{"device", "torch", "commit", "date"}`` for records and
  benchmarks.

Example::

    rf = ResultsFile("figures/s4_regression_paper.jsonl")
    done = rf.completed_keys()
    for cfg in grid:
        key = run_key(cfg)
        if key in done:
            continue
        rec = train(cfg)  # {"method", "trainable_pct", "best_mse", "final_mse", "lr", "seed", "status", ...}
        rf.append({**rec, "key": key})
    while True:  # grow the grid where a best lr is at an edge
        todo = {g: lr_extension_plan(records_of(g), base_lrs, seeds) for g in groups}
        if not any(todo.values()):
            break
        ...  # run and append them as above
    rows = best_of_grid(rf.load(), group_keys=("method", "budget_label"))
    plot_mse_vs_params(rows, "figures/s4_mse_vs_params_paper")
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import math
import os
import struct
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, NoReturn, Optional, Sequence

from synthetic.atomic import FileLock, LockHeld, append_durably, atomic_write
from synthetic.grid import (LrEdge, LrPolicy, best_of_grid, edge_label, is_diverged,  # noqa: F401 (re-exported)
                            lr_edge, lr_extension_plan, lr_means, lrs_past)
from synthetic.provenance import environment, git_commit, utc_now  # noqa: F401 (re-exported)
from synthetic.records import canonical as _canonical, infer_from_path, normalise, run_key  # noqa: F401

__all__ = ["run_key", "ResultsFile", "ResultsFileError", "Records", "validate_record", "exit_error", "lock_wait",
           "LockHeld", "one_configuration", "run_records", "subsample_curve",
           # re-exported from synthetic.grid and synthetic.provenance
           "is_diverged", "best_of_grid", "LrPolicy", "LrEdge", "lr_edge", "lr_means", "lr_extension_plan", "lrs_past",
           "edge_label", "environment", "git_commit", "utc_now"]


# ---------------------------------------------------------------------------------- results file
FORMAT = "synthetic-results"
FORMAT_VERSION = 1
SHARED_FIELDS = ("config", "study_config")  # dict fields most records of a file repeat: stored once, referenced
_F32_MIN = 4  # a list of at least this many float32-exact floats is stored packed


def _json_safe(v: Any) -> Any:
    """Replace non-finite floats by None so the file stays strict JSON."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _compact(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"), allow_nan=False)


def _is_f32(x: Any) -> bool:
    return type(x) is float and math.isfinite(x) and float(struct.unpack("<f", struct.pack("<f", x))[0]) == x


def _pack_f32(xs: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(xs)}f", *xs)).decode("ascii")


def _unpack_f32(s: str) -> List[float]:
    raw = base64.b64decode(s.encode("ascii"), validate=True)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def _encode_value(v: Any) -> Any:
    """A loss curve of float32 values (``[x, ...]`` or ``[[iteration, x], ...]``) as ``{"$f32": base64}`` (plus
    ``"i"``: the iterations); anything else unchanged. Lossless: every value is exactly a float32."""
    if isinstance(v, list) and len(v) >= _F32_MIN:
        if all(_is_f32(x) for x in v):
            return {"$f32": _pack_f32(v)}
        if all(isinstance(p, list) and len(p) == 2 and type(p[0]) is int and _is_f32(p[1]) for p in v):
            return {"$f32": _pack_f32([p[1] for p in v]), "i": [p[0] for p in v]}
    return v


def _decode_value(v: Any, shared: Dict[str, Any]) -> Any:
    if isinstance(v, dict):
        if set(v) == {"$ref"}:
            return copy.deepcopy(shared[v["$ref"]])  # KeyError: an undefined reference
        if set(v) == {"$f32"}:
            return _unpack_f32(v["$f32"])
        if set(v) == {"$f32", "i"}:
            return [[i, x] for i, x in zip(v["i"], _unpack_f32(v["$f32"]))]
    return v


def _shared_id(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def run_records(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The per-run records of a results file (drops ``kind: "sweep"`` wall-time records); keeps the file's name."""
    out = Records(r for r in records if r.get("kind", "run") == "run")
    out.path = getattr(records, "path", None)
    return out


class Records(list):
    """A results file's records (a list), with ``path``: the file they came from (None if not from a file)."""

    path: Optional[Path] = None


class ResultsFileError(ValueError):
    """A results file that cannot be used as one (corrupted, a record without its fields, another experiment's, an
    old-format file to write to): the message names the file and, where it is one line, the line."""


REQUIRED_RUN_FIELDS = ("method", "budget", "lr", "seed", "status")


def validate_record(rec: Dict[str, Any], where: str) -> None:
    """Raise :class:`ResultsFileError` naming ``where`` (file and line) if ``rec`` (already normalised) lacks a field
    every record of its kind has (:data:`synthetic.records.RUN_FIELDS`), or says ``status: "ok"`` without a
    ``best_mse`` (such a run would count as diverged)."""
    key = rec.get("key")
    if not isinstance(key, str) or not key:
        raise ResultsFileError(f"{where}: a record without a run key ('key'); repair or remove that line")
    kind = rec.get("kind")
    if kind == "sweep":
        return
    if kind != "run":
        raise ResultsFileError(f"{where}: unknown record kind {kind!r} (expected 'run' or 'sweep')")
    missing = [f for f in REQUIRED_RUN_FIELDS if f not in rec]
    if missing:
        raise ResultsFileError(f"{where}: run record without {', '.join(missing)}; repair or remove that line")
    if not isinstance(rec["seed"], int) or isinstance(rec["seed"], bool):
        raise ResultsFileError(f"{where}: seed must be an integer, got {rec['seed']!r}")
    if not isinstance(rec["method"], str) or not isinstance(rec["status"], str):
        raise ResultsFileError(f"{where}: method and status must be strings")
    bm = rec.get("best_mse")
    if rec["status"] == "ok" and (not isinstance(bm, (int, float)) or isinstance(bm, bool) or not math.isfinite(bm)):
        raise ResultsFileError(f"{where}: status 'ok' but best_mse is {bm!r} (a finished run has a finite best_mse)")


def lock_wait() -> bool:
    """Whether a writer waits for the holder of a results file's lock (``SYNTHETIC_LOCK=wait``) or stops at once
    (default, ``SYNTHETIC_LOCK=fail``)."""
    v = os.environ.get("SYNTHETIC_LOCK", "fail").strip().lower()
    if v not in ("wait", "fail", ""):
        raise ResultsFileError(f"SYNTHETIC_LOCK: expected 'wait' or 'fail', got {v!r}")
    return v == "wait"


class ResultsFile:
    """Run records on disk, one JSON object per line (JSON Lines), appended (see the module docstring).

    Lines: a header ``{"format": "synthetic-results", "version": 1}``; records (compact JSON, keys in the record's
    order); ``{"$shared": id, "value": {...}}`` lines that hold a dict field several records share (e.g. the
    experiment's ``config``), which records reference as ``{"$ref": id}``; loss curves of float32 values packed as
    ``{"$f32": base64}`` (and ``"i"``: their iterations). Every record loads to the same dict as written. A torn
    last line (a kill mid-write) is dropped with a note; any other broken line or invalid record is a
    :class:`ResultsFileError` naming the file and the line. A file holding a JSON list (the old format) loads as
    well; a missing ``x.jsonl`` reads its old ``x.json`` if that exists; writes go to JSON Lines only.
    """

    def __init__(self, path, log: Callable[[str], None] = None):
        self.path = Path(path)
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self._cache: Optional[tuple] = None  # (stat signature, keys, shared ids) after our own read or write
        self._noted: set = set()

    # ------------------------------------------------------------------------------ reading
    @property
    def legacy_path(self) -> Optional[Path]:
        """The old-format file this one replaces (``x.json`` beside ``x.jsonl``), or None."""
        return self.path.with_suffix(".json") if self.path.suffix == ".jsonl" else None

    def source(self) -> Optional[Path]:
        """The file the records are read from: this one, else its old-format predecessor, else None."""
        if self.path.exists():
            return self.path
        lp = self.legacy_path
        return lp if lp is not None and lp.is_file() else None

    def _read_text(self, path: Path) -> str:
        if path.is_dir():
            raise ResultsFileError(f"{path}: is a folder, not a results file")
        try:
            return path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ResultsFileError(f"{path}: not a text file; the file was left as it is") from None

    def _note(self, msg: str) -> None:
        if msg not in self._noted:
            self._noted.add(msg)
            self.log(msg)

    def _parse(self, path: Path, text: str) -> "Records":
        """The records of ``text`` (the file ``path``), with ``.lines`` (each record's line, or its place in an
        old-format list), ``.legacy`` (an old-format list), ``.shared_ids`` and ``.torn`` (bytes of a torn tail)."""
        hint = infer_from_path(path)
        if text.lstrip().startswith("["):  # the old format: one JSON list
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise ResultsFileError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the "
                                       "file was left as it is: repair or move it, or pass another --out") from None
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise ResultsFileError(f"{path}: expected a JSON list of run records (objects); the file was left "
                                       "as it is")
            out = Records()
            out.lines = []
            for i, r in enumerate(data):
                rec = normalise(r, **hint)
                validate_record(rec, f"{path}, record {i + 1} of the list")
                out.append(rec)
                out.lines.append(i + 1)
            out.legacy = True
            out.shared_ids, out.torn = set(), 0
            return out
        out = Records()
        out.lines, out.legacy, out.shared_ids, out.torn = [], False, set(), 0
        shared: Dict[str, Any] = {}
        lines = text.split("\n")
        last = len(lines) - 1 if lines[-1] else len(lines) - 2  # index of the last non-empty segment
        first = True
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            where = f"{path}, line {i + 1}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                # a torn last line: a run killed while its record was written (never the first line: the header is
                # written whole when the file is created, so a broken first line is not a results file)
                if i == last and not first:
                    out.torn = len(line.encode()) + (1 if i < len(lines) - 1 else 0)
                    self._note(f"note: {where}: dropped a torn last line ({out.torn} bytes; a run killed while "
                               "writing its record; the next run of the sweep removes it and reruns that run)")
                    continue
                raise ResultsFileError(f"{where}: not valid JSON (column {e.colno}: {e.msg}); the file was left as it "
                                       "is: repair or move it, or pass another --out") from None
            first = False
            if not isinstance(obj, dict):
                raise ResultsFileError(f"{where}: expected a JSON object (a record), got {type(obj).__name__}")
            if "format" in obj and "key" not in obj:
                if obj.get("format") != FORMAT or obj.get("version") != FORMAT_VERSION:
                    raise ResultsFileError(f"{where}: not a results file of this version ({_compact(obj)[:80]})")
                continue
            if "$shared" in obj:
                if not isinstance(obj.get("value"), dict):
                    raise ResultsFileError(f"{where}: a $shared line without a value")
                shared[str(obj["$shared"])] = obj["value"]
                out.shared_ids.add(str(obj["$shared"]))
                continue
            try:
                rec = {k: _decode_value(v, shared) for k, v in obj.items()}
            except KeyError as e:
                raise ResultsFileError(f"{where}: refers to shared value {e} that no earlier line defines") from None
            except (ValueError, struct.error, TypeError):
                raise ResultsFileError(f"{where}: a packed ($f32) value does not decode") from None
            rec = normalise(rec, **hint)
            validate_record(rec, where)
            out.append(rec)
            out.lines.append(i + 1)
        return out

    def read(self) -> "Records":
        """The records with their line numbers (``.lines``), ``.path`` (the file read) and ``.torn``."""
        src = self.source()
        if src is None:
            out = Records()
            out.lines, out.legacy, out.shared_ids, out.torn = [], False, set(), 0
            return out
        st = os.stat(src)
        out = self._parse(src, self._read_text(src))
        out.path = src
        if src == self.path and not out.legacy:
            self._cache = ((st.st_ino, st.st_size, st.st_mtime_ns), {r["key"] for r in out}, set(out.shared_ids))
        return out

    def load(self) -> List[Dict[str, Any]]:
        """The records, in the current schema (older files pass through :func:`synthetic.records.normalise`)."""
        return self.read()

    def runs(self) -> List[Dict[str, Any]]:
        """The run records (``kind`` ``"run"``; a ``"sweep"`` record holds a sweep's wall time)."""
        return run_records(self.read())

    def completed_keys(self) -> set:
        return {r["key"] for r in self.load()}

    # ------------------------------------------------------------------------------ writing
    def lock(self, wait: Optional[bool] = None) -> FileLock:
        """The one-writer lock of this file (a context manager; :class:`synthetic.atomic.FileLock`)."""
        return FileLock(self.path, wait=lock_wait() if wait is None else wait, log=self.log)

    @staticmethod
    def encode(records: Iterable[Dict[str, Any]], shared_ids: set) -> str:
        """The lines that store ``records`` after a file whose shared values are ``shared_ids`` (updated in place)."""
        lines = []
        for r in records:
            r = _json_safe(r)
            enc: Dict[str, Any] = {}
            for k, v in r.items():
                if k in SHARED_FIELDS and isinstance(v, dict) and v:
                    sid = _shared_id(_compact(_canonical(v)))
                    if sid not in shared_ids:
                        lines.append(_compact({"$shared": sid, "value": v}))
                        shared_ids.add(sid)
                    enc[k] = {"$ref": sid}
                else:
                    enc[k] = _encode_value(v)
            lines.append(_compact(enc))
        return "".join(line + "\n" for line in lines)

    def _prepare(self) -> tuple:
        """Before an append: the keys and shared ids in the file; a torn tail removed; an old-format predecessor
        (``x.json``) copied into this file first."""
        if not self.path.exists():
            lp = self.legacy_path
            if lp is not None and lp.is_file():
                self.adopt(lp)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(self.path, _compact({"format": FORMAT, "version": FORMAT_VERSION}) + "\n")
        st = os.stat(self.path)
        sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1], self._cache[2]
        recs = self.read()
        if recs.legacy:
            raise ResultsFileError(f"{self.path}: an old-format results file (a JSON list) is not appended to: "
                                   f"migrate it first: python scripts/migrate_results.py {self.path}")
        data = self.path.read_bytes()
        if recs.torn or (data and not data.endswith(b"\n")):
            with open(self.path, "r+b") as f:
                if recs.torn:
                    f.truncate(len(data) - recs.torn)
                else:  # a complete last line without its newline (written by hand): end it
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
            if recs.torn:
                self.log(f"note: {self.path}: removed the torn last line ({recs.torn} bytes); "
                         f"{len(recs)} records kept")
            recs = self.read()
        return self._cache[1], self._cache[2]

    def adopt(self, legacy: Path) -> int:
        """Create this file from an old-format list ``legacy`` (every record, in order, as :meth:`load` reads them;
        ``legacy`` itself is kept). Returns the number of records."""
        recs = ResultsFile(legacy).read()
        head = _compact({"format": FORMAT, "version": FORMAT_VERSION}) + "\n"
        atomic_write(self.path, head + self.encode(recs, set()))
        self.log(f"note: {legacy} (old format) copied to {self.path} ({len(recs)} records); {legacy} is no longer "
                 "read: remove it (scripts/migrate_results.py does)")
        return len(recs)

    def extend(self, records: Iterable[Dict[str, Any]]) -> int:
        """Append the records whose key is not in the file yet (one write, flushed to disk); returns how many.
        Call it while holding :meth:`lock` (the runner does) when another process could write the same file."""
        new = list(records)
        for r in new:
            if "key" not in r:
                raise ValueError("record: needs a 'key' (use run_key(config))")
        if not new:
            return 0
        keys, shared_ids = self._prepare()
        fresh, seen = [], set()
        for r in new:
            if r["key"] not in keys and r["key"] not in seen:
                fresh.append(r)
                seen.add(r["key"])
        if not fresh:
            return 0
        ids = set(shared_ids)
        append_durably(self.path, self.encode(fresh, ids))
        st = os.stat(self.path)
        self._cache = ((st.st_ino, st.st_size, st.st_mtime_ns), keys | seen, ids)
        return len(fresh)

    def append(self, record: Dict[str, Any]) -> None:
        self.extend([record])

    def write_all(self, records: Sequence[Dict[str, Any]]) -> None:
        """Replace the file by exactly ``records`` (all of them, duplicates and order kept), atomically: for
        migrations and merges, not for sweeps (they append)."""
        head = _compact({"format": FORMAT, "version": FORMAT_VERSION}) + "\n"
        atomic_write(self.path, head + self.encode(records, set()))
        self._cache = None


def subsample_curve(curve: List[float], n: int) -> List[List[float]]:
    """[[iteration, loss], ...] at about n evenly spaced iterations (first and last included)."""
    if not curve:
        return []
    idx = sorted({round(i * (len(curve) - 1) / max(n - 1, 1)) for i in range(min(n, len(curve)))})
    return [[i, curve[i]] for i in idx]


def _config_text(fp: str, want: str) -> str:
    """A configuration's fingerprint as the fields where it differs from the one asked for (when both are JSON)."""
    try:
        a, b = json.loads(fp), json.loads(want)
    except ValueError:
        return fp[:80]
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return fp[:80]
    diff = [f"{k} {_compact(a.get(k))}" for k in sorted(set(a) | set(b), key=str) if a.get(k) != b.get(k)]
    return ", ".join(diff)[:200] or "the same fields"


def one_configuration(records: Sequence[Dict[str, Any]], fingerprint, want: str,
                      note=print) -> List[Dict[str, Any]]:
    """The records of one configuration: those whose ``fingerprint(record)`` is ``want``. A results file can hold
    runs of several configurations (a rerun with another ``--batch``); a summary or figure never mixes them, and
    ``note`` says how many records it leaves out. When the file has records but none of ``want``'s, nothing is
    shown as if it were: a one-line error names the file and the configurations it has (where they differ from
    the one asked for), exit 2."""
    if not records:
        return list(records)
    fps = [fingerprint(r) for r in records]
    kept = [r for r, f in zip(records, fps) if f == want]
    if not kept:
        others = list(dict.fromkeys(fps))
        where = getattr(records, "path", None) or "the results file"
        desc = "; ".join(f"({_config_text(f, want)}: {fps.count(f)} records)" for f in others[:4])
        exit_error(f"{where} has no records of the configuration asked for; it has {len(others)} other "
                   f"configuration{'s' if len(others) > 1 else ''}, differing in {desc}"
                   + (" ..." if len(others) > 4 else "") + " (pass the options of one of them)")
    if len(kept) < len(records):
        note(f"note: {len(records) - len(kept)} records of other configurations in the file are not shown")
    return kept


def exit_error(msg: str) -> "NoReturn":
    """A user-facing failure: one line on stderr, exit status 2 (as argparse's errors), no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)

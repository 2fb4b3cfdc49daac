"""Move old-format results files (one JSON list, ``x.json``) to the append-only format (JSON Lines, ``x.jsonl``).

    python scripts/migrate_results.py                 # every old-format results file under figures/
    python scripts/migrate_results.py PATH ...        # these files (e.g. a GPU campaign's copies)
    python scripts/migrate_results.py --check         # exit 1 if some file under figures/ still needs it

For each ``x.json`` that is a results list (a JSON list of records with a ``key``; benchmark and figure data,
``bench_*.json``, ``theorem1_training[_cpu].json``, ``official_s4_runs.json``, ... are objects and left alone):
its records, read as :class:`synthetic.results.ResultsFile` reads them (old field names renamed, nothing else
changed), go to ``x.jsonl`` under that file's writer lock: the whole file when ``x.jsonl`` does not exist yet;
otherwise only the records whose key ``x.jsonl`` lacks, appended (a later campaign's old-format copy of a file
already migrated). Before ``x.json`` is removed the script checks that every one of its records loads back from
``x.jsonl`` as the same dict (same JSON, int and float kept apart) and, for a new file, that the best-of-grid
tables before and after are identical. Rerunnable and idempotent: a second run finds nothing to do. Exit 2 with a
one-line message (nothing written) for a file that is not valid or not consistent.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic.records import RENAMED  # noqa: E402
from synthetic.results import LockHeld, ResultsFile, ResultsFileError, best_of_grid, run_records  # noqa: E402
from theory.report import plain  # noqa: E402


def is_results_list(data) -> bool:
    return isinstance(data, list) and bool(data) and all(isinstance(r, dict) and "key" in r for r in data)


def check_renames_only(old: list, new: list) -> None:
    """Raise if ``new`` drops a record, changes a key or a value, or renames other than :data:`RENAMED`."""
    if len(old) != len(new):
        raise ValueError("record count changed")
    for a, b in zip(old, new):
        if a["key"] != b["key"]:
            raise ValueError(f"key changed: {a['key'][:80]}")
        for k, v in a.items():
            if b.get(RENAMED.get(k, k)) != v:
                raise ValueError(f"value of {k!r} changed in {a['key'][:80]}")


def exact(r) -> str:
    """A record as canonical JSON: equal strings mean equal dicts, with 1 and 1.0 told apart."""
    return json.dumps(r, sort_keys=True, allow_nan=False)


def tables(records) -> str:
    """The best-of-grid tables of a file's records, as canonical JSON (per experiment's grouping)."""
    runs = run_records(records)
    return exact([best_of_grid(runs, group_keys=g) for g in (("method", "budget_label"), ("arm", "budget_label"))])


def migrate(p: Path, check: bool, log=print) -> bool:
    """Migrate one file; True if it needed it (or, with ``check``, needs it)."""
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError):
        return False  # not JSON at all: not an old results list (a .jsonl, a log ...)
    if not is_results_list(data):
        return False
    target = ResultsFile(p.with_suffix(".jsonl"))
    if check:
        log(f"{p}: needs migrating to {target.path.name}")
        return True
    old = ResultsFile(p).load()  # normalised and validated
    check_renames_only(data, old)
    with target.lock():
        if not target.path.exists():
            target.write_all(old)
            after = target.load()
            if [exact(r) for r in after] != [exact(r) for r in old] or tables(after) != tables(old):
                target.path.unlink()
                raise ResultsFileError(f"{p}: the records read back from {target.path} differ; nothing migrated")
            what = f"{len(old)} records, best-of-grid tables identical"
        else:
            have: Dict[str, set] = {}  # by key, a set: shards' sweep records can share a key (same second)
            for r in target.load():
                have.setdefault(r["key"], set()).add(exact(r))
            new = [r for r in old if r["key"] not in have]
            clash = [r["key"] for r in old if r["key"] in have and exact(r) not in have[r["key"]]]
            if clash:
                raise ResultsFileError(f"{p}: {len(clash)} records have the key of a different record in "
                                       f"{target.path} (first: {clash[0][:80]}); nothing migrated")
            target.extend(new)
            what = f"{len(new)} new records appended, {len(old) - len(new)} already there"
        back: Dict[str, list] = {}  # by key, a list: shards' sweep records can share a key (same second)
        for r in target.load():
            back.setdefault(r["key"], []).append(exact(r))
        if any(exact(r) not in back.get(r["key"], []) for r in old):
            raise ResultsFileError(f"{p}: a record does not read back from {target.path}; {p} kept")
        p.unlink()
    log(f"{p} -> {target.path.name}: {what}; {p.name} removed")
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("paths", nargs="*", help="old-format results files (default: every figures/*.json that is one)")
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if a file needs migrating")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.paths] or sorted((ROOT / "figures").glob("*.json"))
    n = 0
    for p in paths:
        if not p.is_file():
            print(f"migrate_results: error: {p}: no such file", file=sys.stderr)
            return 2
        try:
            n += migrate(p, args.check)
        except (ValueError, LockHeld) as e:  # ResultsFileError is a ValueError
            print(f"migrate_results: error: {e}", file=sys.stderr)
            return 2
    if not n:
        print("no old-format results files: nothing to migrate")
    return 1 if (args.check and n) else 0


if __name__ == "__main__":
    sys.exit(main())

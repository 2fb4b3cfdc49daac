"""Rewrite results files in the current record schema (``synthetic.records``), atomically.

    python scripts/migrate_results.py                 # every results file under figures/
    python scripts/migrate_results.py --check         # exit 1 if some file is not in the current schema

Only field renames and additions (``synthetic.records.normalise``): every run key and every value of the
old records is kept; the script checks that before it writes, and leaves files that are not results lists
(benchmarks, figure data) alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from synthetic.records import RENAMED  # noqa: E402
from synthetic.results import ResultsFile  # noqa: E402


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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="results files (default: every figures/*.json that is one)")
    ap.add_argument("--check", action="store_true", help="only report; exit 1 if a file needs migrating")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.paths] or sorted((ROOT / "figures").glob("*.json"))
    stale = 0
    for p in paths:
        data = json.loads(p.read_text())
        if not is_results_list(data):
            continue
        rf = ResultsFile(p)
        new = rf.load()
        check_renames_only(data, new)
        if new == data:
            print(f"{p}: current ({len(new)} records)")
            continue
        stale += 1
        if args.check:
            print(f"{p}: needs migrating")
            continue
        rf._write(new)
        print(f"{p}: rewritten ({len(new)} records, keys unchanged)")
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())

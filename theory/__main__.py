"""``python -m theory``: verify every registered claim on random instances and print a table.

Exit status 1 if any claim FAILED (a "finding" — a claim that does not hold as stated, reported
with what does hold — is not a failure).
"""

from __future__ import annotations

import argparse
import sys

from .report import discover, format_table, matching_claims, run_report


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m theory", description=__doc__)
    p.add_argument("--instances", type=int, default=20, help="random instances per claim (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--only", default=None, help="run only claims whose name contains this text")
    args = p.parse_args(argv)
    if args.instances < 1:
        p.error("--instances: must be >= 1")
    if args.only is not None and not matching_claims(args.only):
        p.error(f"--only: no claim matches {args.only!r}; known claims: " + "; ".join(discover()))
    results = run_report(args.instances, args.seed, args.only)
    print(format_table(results))
    failed = [r.claim for r in results if r.verdict == "FAILED"]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m theory``: verify every registered claim on random instances and print a table.

Exit status 1 if any claim FAILED (a "finding" — a claim that does not hold as stated, reported
with what does hold — is not a failure); 2 for a bad option (one line naming it).
"""

from __future__ import annotations

import argparse
import sys

from .report import REPORT_WIDTH, discover, format_table, matching_claims, plain, run_report

# ~0.15 s per instance over all claims on 2 CPU cores (20: 5 s, 100: 16 s), so 2,000 is ~5 min; more
# instances belong to the property tests (HYPOTHESIS_PROFILE=thorough pytest theory).
MAX_INSTANCES = 2000
SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes a 64-bit seed; every claim seeds one from --seed


class _Parser(argparse.ArgumentParser):
    """An option error is one line on stderr (``python -m theory: error: --seed: ...``), exit 2, no usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None) -> int:
    p = _Parser(prog="python -m theory", description=plain(__doc__))
    p.add_argument("--instances", type=int, default=20, help="random instances per claim (default 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--only", default=None, help="run only claims whose name contains this text")
    p.add_argument("--wide", action="store_true",
                   help=f"one line per claim, note included (default: wrapped to {REPORT_WIDTH} "
                        "columns, each note on the lines below its claim)")
    args = p.parse_args(argv)
    if not 1 <= args.instances <= MAX_INSTANCES:
        p.error(f"--instances: must be in [1, {MAX_INSTANCES}] (about 0.15 s per instance over all claims; "
                f"for more, HYPOTHESIS_PROFILE=thorough pytest theory), got {args.instances}")
    if not 0 <= args.seed <= SEED_MAX:
        p.error(f"--seed: must be in [0, 2**63 - 1] (a torch generator seed), got {args.seed}")
    if args.only is not None and not matching_claims(args.only):
        p.error(f"--only: no claim matches {args.only!r}; known claims: " + "; ".join(discover()))
    results = run_report(args.instances, args.seed, args.only)
    print(format_table(results, width=None if args.wide else REPORT_WIDTH))
    failed = [r.claim for r in results if r.verdict == "FAILED"]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The MSE of a dead network (output 0 everywhere) per seed of the Theorem 1 study, beside the exact-start records.

    python scripts/theorem1_zero_output.py [--preset paper] [--activation relu] [--seeds 0,1,2] [--batches 3]

With ReLU the target's outputs are >= 0, and a stack whose last ReLU is dead for every input outputs 0: its MSE is
E[y^2] over the target's outputs. This prints that level per seed (the mean over ``--batches`` batches of the study's
own data stream, drawn on the CPU) and, where the results file of the preset and activation is committed, the
"Oracle start" records' best and final MSEs per seed, so the floor they end on can be read against it
(docs/findings.md, "Why SDT does not reach zero").
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from synthetic.results import ResultsFile  # noqa: E402
from synthetic.s4.theorem1_study import Theorem1Study, parse_config, results_path  # noqa: E402


REL = 0.01  # "at the zero-output level": a final MSE within this relative distance of it


def zero_output_mse(trainer, seed: int, batches: int) -> float:
    """Mean over ``batches`` of the study's data stream 0 of ``mean(y^2)``: the MSE of outputting 0."""
    _, target = trainer.models(seed)
    g = trainer.data(seed, stream=0)
    return statistics.fmean(float((trainer.batch(g, target)[1] ** 2).mean()) for _ in range(batches))


def start_records(path: Path) -> dict:
    """{seed: [(noise, lr, best, final), ...]} of the "Oracle start" runs in ``path`` (empty where it is missing)."""
    out = defaultdict(list)
    if not path.exists():
        return out
    for r in ResultsFile(path).runs():
        if r.get("method") == "Oracle start" and r.get("status") == "ok":
            out[r["seed"]].append((r["budget"]["noise"], r["lr"], r["best_mse"], r["final_mse"]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/theorem1_zero_output.py", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--preset", default="paper", choices=("cpu", "paper", "tiny"))
    p.add_argument("--activation", default="relu", choices=("relu", "identity"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--batches", type=int, default=3, help="batches averaged per seed (>= 1)")
    a = p.parse_args(argv)
    if a.batches < 1:
        p.error(f"--batches: must be >= 1, got {a.batches}")
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds: comma-separated integers, got {a.seeds!r}")
    cfg = parse_config(["--preset", a.preset, "--activation", a.activation, "--precision", "fp32", "--no-compile",
                        "--device", "cpu"])
    trainer = Theorem1Study(cfg, log=lambda *_: None).make_trainer()
    path = Path(results_path(cfg))
    recs = start_records(path)
    print(f"{a.preset} preset, {a.activation}: zero-output MSE per seed ({a.batches} batches), and the Oracle start "
          f"runs of {path} (noise > 0, every lr)")
    for s in seeds:
        z = zero_output_mse(trainer, s, a.batches)
        noisy = [r for r in recs.get(s, []) if r[0] > 0]
        near = sum(abs(r[3] - z) <= REL * z for r in noisy)
        runs = (f"lowest best {min(r[2] for r in noisy):.4g}; {near} of {len(noisy)} runs end (final MSE) within "
                f"{REL:.0%} of the zero output") if noisy else "no runs"
        print(f"  seed {s}: zero output {z:.4g}; {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

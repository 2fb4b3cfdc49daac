"""Every committed results file still dry-runs and summarises as before: for each file of ``figures/``, run the
command that wrote it with ``--dry-run`` and with ``--plot-only`` on a copy of the file (so no committed figure is
redrawn) and keep what each prints on stdout. ``--capture DIR`` writes the texts there; ``--compare DIR`` also
compares them with an earlier capture (e.g. one made on the code before a change) and exits 1 on a difference.

    python scripts/check_committed_results.py --capture /tmp/after --compare /tmp/before
    python scripts/check_committed_results.py --capture /tmp/old --old-spelling   # the deprecated options

The dry runs must report ``0 base-grid runs to do``; the plot-only texts must be identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from theory.report import plain  # noqa: E402

# (name, module, options, options in the deprecated spelling, results files used)
CASES = [
    ("s4_paper", "synthetic.s4_regression", "--preset paper --batch 1000 --seeds 0,1,2",
     "--preset paper --batch 1000 --seeds 0,1,2", ["s4_regression_paper.jsonl"]),
    ("s4_paper_all", "synthetic.s4_regression", "--preset paper --batch 1000 --seeds 0,1,2 --methods all",
     "--preset paper --batch 1000 --seeds 0,1,2 --methods all", ["peft_methods_s4_paper.jsonl"]),
    ("s4_official", "synthetic.s4_regression", "--preset official --precision tf32",
     "--preset official --precision tf32",
     ["s4_regression_official.jsonl"]),
    ("mamba_cpu", "synthetic.mamba_regression", "--preset cpu", "--preset cpu", ["mamba_regression_cpu.jsonl"]),
    ("mamba_cpu_all", "synthetic.mamba_regression", "--preset cpu --methods all", "--preset cpu --methods all",
     ["peft_methods_mamba_cpu.jsonl"]),
    ("mamba_paper", "synthetic.mamba_regression", "--preset paper --backend mamba_ssm --seeds 0,1,2",
     "--preset paper --backend mamba_ssm --seeds 0,1,2", ["mamba_regression_paper.jsonl"]),
    ("mamba_paper_all", "synthetic.mamba_regression", "--preset paper --backend mamba_ssm --seeds 0,1,2 --methods all",
     "--preset paper --backend mamba_ssm --seeds 0,1,2 --methods all", ["peft_methods_mamba_paper.jsonl"]),
    ("mamba2_cpu", "synthetic.mamba2_regression", "--preset cpu", "--preset cpu", ["mamba2_regression_cpu.jsonl"]),
    ("hybrid_cpu", "synthetic.hybrid_regression", "--preset cpu", "--preset cpu", ["hybrid_regression_cpu.jsonl"]),
    ("theorem1_cpu_linear", "synthetic.s4_theorem1", "--preset cpu --activation identity",
     "--preset cpu --activation identity", ["theorem1_training_cpu_linear.jsonl", "theorem1_training_cpu_relu.jsonl"]),
    ("theorem1_cpu_relu", "synthetic.s4_theorem1", "--preset cpu --activation relu", "--preset cpu --activation relu",
     ["theorem1_training_cpu_linear.jsonl", "theorem1_training_cpu_relu.jsonl"]),
    ("theorem1_paper_linear", "synthetic.s4_theorem1", "--preset paper --activation identity",
     "--preset paper --activation identity",
     ["theorem1_training_paper_linear.jsonl", "theorem1_training_paper_relu.jsonl"]),
    ("theorem1_paper_relu", "synthetic.s4_theorem1", "--preset paper --activation relu",
     "--preset paper --activation relu", ["theorem1_training_paper_linear.jsonl", "theorem1_training_paper_relu.jsonl"]),
]


def run(module: str, opts: str, out: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", module, *opts.split(), "--out", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    return f"$ {' '.join(cmd[1:])}\n[rc {p.returncode}]\n{p.stdout}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=plain(__doc__.split("\n\n")[0]))
    ap.add_argument("--capture", required=True, help="folder for the captured texts")
    ap.add_argument("--compare", default="", help="folder of an earlier capture to compare with")
    ap.add_argument("--old-spelling", action="store_true", help="use the deprecated option spellings")
    ap.add_argument("--only", default="", help="comma-separated case names")
    a = ap.parse_args(argv)
    cap = Path(a.capture)
    cap.mkdir(parents=True, exist_ok=True)
    bad = []
    for name, module, new, old, files in CASES:
        if a.only and name not in a.only.split(","):
            continue
        opts = old if a.old_spelling else new
        work = Path(tempfile.mkdtemp(prefix="cmp_"))
        out = Path("/tmp/check_committed_results") / name  # the same path in every capture (it is printed)
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for f in files:
            shutil.copy(ROOT / "figures" / f, out / f)
        texts = {"dry": run(module, opts + " --dry-run", out), "plot": run(module, opts + " --plot-only", out)}
        shutil.rmtree(work, ignore_errors=True)
        for kind, text in texts.items():
            text = text.replace(opts, "<opts>")
            (cap / f"{name}.{kind}.txt").write_text(text)
            if kind == "dry" and " 0 base-grid runs to do" not in text and "\n0 base-grid runs to do" not in text:
                bad.append(f"{name}: dry run has runs to do")
            if a.compare:
                before = Path(a.compare) / f"{name}.{kind}.txt"
                body = lambda t: t.split("\n", 1)[1]  # noqa: E731 (the command line may differ)
                if not before.exists() or body(before.read_text()) != body(text):
                    bad.append(f"{name}.{kind}: differs from {before}")
        print(name, "ok" if not any(b.startswith(name) for b in bad) else "DIFF", flush=True)
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

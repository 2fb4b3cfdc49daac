#!/usr/bin/env bash
# Redraw every committed figure of figures/ from its committed results file, with no training: each line is the
# command (python -m ...) that draws one figure or pair, given the options of the run that wrote the data, so it
# selects the same records (--plot-only redraws and prints the summary table; s4_fig2 and theory.capacity
# --replot only draw). Run from anywhere; it works in the repository root.
#
#   bash scripts/redraw_figures.sh            # every figure; prints each file it writes
#   bash scripts/redraw_figures.sh mamba2     # only the commands whose text contains "mamba2"
#   bash scripts/redraw_figures.sh --list     # the commands, without running them
#   bash scripts/redraw_figures.sh --check    # exit 1 if a committed figures/*.png is named by no line below
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}." MPLBACKEND=Agg
py="${PYTHON:-python}"
commands=(
  # s4_mse_vs_params_paper.png
  "synthetic.s4_regression --preset paper --batch 1000 --seeds 0,1,2 --out figures --plot-only"
  # peft_methods_s4_paper.png
  "synthetic.s4_regression --preset paper --batch 1000 --seeds 0,1,2 --methods all --out figures --plot-only"
  # s4_fig2_three_ways.png (+ .json, the points drawn): the paper, official_s4_runs.json, s4_regression_*.jsonl
  "synthetic.s4_fig2"
  # theorem1_training.png (both variants' files, paper preset)
  "synthetic.s4_theorem1 --preset paper --out figures --plot-only"
  # theorem1_training_cpu.png
  "synthetic.s4_theorem1 --preset cpu --out figures --plot-only"
  # mamba_mse_vs_params_paper.png, mamba_loss_curves_paper.png
  "synthetic.mamba_regression --preset paper --backend mamba_ssm --seeds 0,1,2 --out figures --plot-only"
  # peft_methods_mamba_paper.png, peft_methods_mamba_loss_curves_paper.png
  "synthetic.mamba_regression --preset paper --backend mamba_ssm --seeds 0,1,2 --methods all --out figures --plot-only"
  # mamba_model_seed1/mamba_mse_vs_params_paper.png, mamba_model_seed1/mamba_loss_curves_paper.png (frozen/target pair 1)
  "synthetic.mamba_regression --preset paper --backend mamba_ssm --seeds 0,1 --model-seed 1 --out figures/mamba_model_seed1 --plot-only"
  # mamba_model_seed2/mamba_mse_vs_params_paper.png, mamba_model_seed2/mamba_loss_curves_paper.png (frozen/target pair 2)
  "synthetic.mamba_regression --preset paper --backend mamba_ssm --seeds 0,1 --model-seed 2 --out figures/mamba_model_seed2 --plot-only"
  # mamba_mse_vs_params_cpu.png, mamba_loss_curves_cpu.png
  "synthetic.mamba_regression --preset cpu --out figures --plot-only"
  # peft_methods_mamba_cpu.png, peft_methods_mamba_loss_curves_cpu.png
  "synthetic.mamba_regression --preset cpu --methods all --out figures --plot-only"
  # mamba2_mse_vs_params_paper.png
  "synthetic.mamba2_regression --preset paper --backend mamba_ssm --seeds 0,1,2 --out figures --plot-only"
  # mamba2_mse_vs_params_cpu.png
  "synthetic.mamba2_regression --preset cpu --out figures --plot-only"
  # hybrid_mse_vs_params_paper.png
  "synthetic.hybrid_regression --preset paper --backend mamba_ssm --seeds 0,1,2 --out figures --plot-only"
  # hybrid_mse_vs_params_cpu.png
  "synthetic.hybrid_regression --preset cpu --out figures --plot-only"
  # theorem1_capacity.png (from figures/theorem1_capacity.json)
  "theory.capacity --replot"
)
only="${1:-}"
if [[ "$only" == "--check" ]]; then
  missing=0
  for png in $(git ls-files 'figures/*.png'); do
    grep -q "^  # .*${png#figures/}" "$0" || { echo "no redraw command for $png"; missing=1; }
  done
  exit "$missing"
fi
for c in "${commands[@]}"; do
  if [[ "$only" == "--list" ]]; then
    echo "python -m $c"
    continue
  fi
  [[ -z "$only" || "$c" == *"$only"* ]] || continue
  echo "\$ python -m $c"
  # shellcheck disable=SC2086  # the options are separate words
  "$py" -m $c
done

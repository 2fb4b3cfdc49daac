#!/usr/bin/env bash
# Issue 21's GPU measurements in one device call (one H200; about 6 minutes, each step under its own timeout
# so the whole stays under 8):
#   (i)   python -m synthetic.bench at the paper configuration (batch 4000), the six paper methods, compiled,
#         many runs per step (R = 16) and a single run (R = 1), into figures/bench_s4.json (--keep-previous: the
#         earlier reports of other devices / run counts stay readable under "previous"; synthetic.s4.bench.load_reports)
#   (ii)  in the R = 1 call, the unmodified official code (difference of a 25- and a 5-iteration run) if its S4/
#         folder is carried at official_s4/S4 (ignored folder; einops installed with pip --target official_s4/pylib)
#   (iii) the scaling table N in {200, 800, 3200} x D in {64, 256} x form, eager (no compile), batch such that
#         D*N*B = 64*200*4000, into figures/bench_s4_scaling_cuda.json (choose_form's table on CUDA)
#   (iv)  RUN_SWEEP=1: the official-preset sweep for SWEEP_BUDGET seconds (default 90) into a scratch folder
#   SPLITK=16: also the split-K projection lever (--proj-split 16), R = 16, Full, into bench_s4_splitk.json (+~90 s)
#   SPLITK and RUN_SWEEP can push one call past 10 minutes: give them their own call with SKIP_MAIN=1 (skips i-iii)
# Everything is written under "$OUT" (figures/ copies, logs, summary.json); the log is tee'd to $OUT/gpu_speed.log.
#   bash scripts/gpu_speed.sh            (from the repo root; OUT defaults to ./out/gpu_speed)
set -euo pipefail
OUT="${OUT:-out/gpu_speed}"
mkdir -p "$OUT/figures"
exec > >(tee -a "$OUT/gpu_speed.log") 2>&1
export PYTHONPATH="${PYTHONPATH:-}:."
PY="${PYTHON:-python}"
METHODS="Frozen,LoRA (Proj),LoRA (S4+Proj),SDT,SDT + LoRA,Full"
# smoke test on a CPU (not a measurement): BENCH_EXTRA="--preset tiny --device cpu" DEVICE=cpu
# SCALING_EXTRA="--scaling-N 16 --scaling-D 4" OUT=/tmp/gs bash scripts/gpu_speed.sh
read -r -a BX <<< "${BENCH_EXTRA:-}"
read -r -a SX <<< "${SCALING_EXTRA:-}"
t0=$(date +%s)
echo "== gpu_speed.sh $(date -u +%FT%TZ) commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
[ -f figures/bench_s4.json ] && cp figures/bench_s4.json "$OUT/figures/bench_s4.json"

if [ "${SKIP_MAIN:-0}" != 1 ]; then
echo "== (i) paper configuration, R = 16 runs per step (compiled)"
timeout 170 "$PY" -m synthetic.bench --preset paper --runs 16 --methods "$METHODS" --iters 10 --warm 3 --check-iters 0 \
    ${BX[@]+"${BX[@]}"} --keep-previous --out "$OUT/figures/bench_s4.json" || echo "R = 16 bench stopped"

OFFICIAL=()
if [ -f official_s4/S4/run_s4.py ]; then
    OFFICIAL=(--official-dir official_s4/S4 --official-iters 25,5)
    echo "== (i)+(ii) paper configuration, single run, with the official code in the same call"
else
    echo "== (i) paper configuration, single run (official_s4/S4 not carried: no official timing)"
fi
timeout 200 "$PY" -m synthetic.bench --preset paper --runs 1 --methods "$METHODS" --iters 20 --warm 3 --check-iters 0 \
    ${OFFICIAL[@]+"${OFFICIAL[@]}"} ${BX[@]+"${BX[@]}"} --keep-previous --out "$OUT/figures/bench_s4.json" || echo "R = 1 bench stopped"

echo "== (iii) scaling table (eager)"
timeout "${SCALING_TIMEOUT:-150}" "$PY" -m synthetic.bench --scaling --device "${DEVICE:-cuda}" --no-compile --iters 5 --warm 2 --rounds 2 \
    ${SX[@]+"${SX[@]}"} --out "$OUT/figures/bench_s4_scaling_cuda.json" || echo "scaling cut off (the table keeps the rows done)"
fi

if [ "${SPLITK:-0}" -gt 1 ]; then
    echo "== lever: split-K projection weight gradient (--proj-split $SPLITK), R = 16, Full (separate file)"
    timeout 150 "$PY" -m synthetic.bench --preset paper --runs 16 --methods Full --iters 10 --warm 3 --check-iters 0 \
        --proj-split "$SPLITK" ${BX[@]+"${BX[@]}"} --out "$OUT/figures/bench_s4_splitk.json" || echo "split-K run stopped"
fi

if [ "${RUN_SWEEP:-0}" = 1 ]; then
    echo "== (iv) official-preset sweep, ${SWEEP_BUDGET:-90} s budget"
    mkdir -p "$OUT/sweep"
    s0=$(date +%s)
    timeout $(( ${SWEEP_BUDGET:-90} + 120 )) "$PY" -m synthetic.s4_regression --preset official \
        --time-budget "${SWEEP_BUDGET:-90}" --out "$OUT/sweep" || echo "sweep stopped"
    echo "sweep wall $(( $(date +%s) - s0 )) s"
fi

[ -f "$OUT/figures/bench_s4.json" ] && "$PY" - "$OUT" <<'EOF'
import json, sys
from synthetic.s4.bench import load_reports
out = sys.argv[1]
reps = load_reports(f"{out}/figures/bench_s4.json")
summary = []
off = next((r["official"]["ms_per_iter"] for r in reps if r.get("official") and r["device"] == reps[0]["device"]), None)
for r in reps:
    if r["device"] != reps[0]["device"]:
        continue
    for row in r["results"]:
        summary.append({"runs_per_step": r["runs_per_step"], "method": row["method"], "ms_per_iter": row["ms_per_iter"],
                        "official_ms_per_iter": off, "official_over_ours": round(off / row["ms_per_iter"], 2) if off else None})
json.dump({"device": reps[0]["device"], "rows": summary}, open(f"{out}/summary.json", "w"), indent=1)
for s in summary:
    print(s)
EOF
echo "== done in $(( $(date +%s) - t0 )) s"

#!/usr/bin/env bash
# Issue 31's GPU check and measurement of the fused deep-S4 layer (synthetic/s4/fused.py) in one device call,
# about 7 minutes at most (every step under its own timeout, cut to what is left of TOTAL_S):
#   (1) pytest tests/test_s4_fused.py: the Triton kernels against the float64 twin, values and gradients, on CUDA
#   (2) python -m synthetic.bench, paper configuration, compiled, R = 16 runs per step: every method with the
#       previous best form (toeplitz) and the fused one, peak memory and a roofline line per row
#   (3) the same at R = 1, with the unmodified official code timed in the same call if official_s4/S4 is carried
#       (ignored folder: the official S4/ code, environment.py, stubs/wandb, einops under official_s4/pylib;
#       ../shared/tools/README.md), into the same JSON (figures/bench_s4_fused_cuda.json; --keep-previous)
#   (4) with the time left: a torch.profiler table of the fused R = 16 Full step (scripts/profile_s4_step.py)
#   (5) with the time left: the scaling table on CUDA (N 200/800/3200, D 64/256, every form incl. fused, eager)
#       into figures/bench_s4_scaling_cuda.json (written after every (N, D): a cut-off keeps its rows)
# Needs no network. Logs and JSON go under $OUT (figures/ copies, *.log, summary printed at the end):
#   OUT=$OUT bash scripts/gpu_s4_fused.sh        (from the repo root; OUT defaults to ./out/gpu_s4_fused)
# Smoke test on a CPU (not a measurement): DEVICE=cpu BENCH_EXTRA="--preset tiny --device cpu --no-compile"
#   SCALING_EXTRA="--scaling-N 16 --scaling-D 4" PROFILE_EXTRA="--device cpu --batch 8 --no-compile" \
#   OUT=/tmp/gf bash scripts/gpu_s4_fused.sh
set -uo pipefail
OUT="${OUT:-out/gpu_s4_fused}"
mkdir -p "$OUT/figures"
exec > >(tee -a "$OUT/gpu_s4_fused.log") 2>&1
export PYTHONPATH="${PYTHONPATH:-}:." PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
TOTAL_S="${TOTAL_S:-400}"  # the whole script's budget (s); each step gets min(its cap, what is left)
METHODS="Frozen,LoRA (Proj),LoRA (S4+Proj),SDT,SDT + LoRA,Full"
FORMS="${FORMS:-toeplitz,fused}"
JSON="$OUT/figures/bench_s4_fused_cuda.json"
read -r -a BX <<< "${BENCH_EXTRA:-}"
read -r -a SX <<< "${SCALING_EXTRA:-}"
t0=$(date +%s)
left() {  # seconds for the next step: min(cap, what is left of TOTAL_S minus a 10 s margin), at least 1
    local cap=$1 rest=$(( TOTAL_S - ($(date +%s) - t0) - 10 ))
    (( rest < cap )) && cap=$rest
    (( cap < 1 )) && cap=1
    echo "$cap"
}
export GIT_COMMIT="${GIT_COMMIT:-${COMMIT:-}}"  # the records' commit: a device copy's .git may be stale
echo "== gpu_s4_fused.sh $(date -u +%FT%TZ) commit ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
"$PY" -c "import triton; print('triton', triton.__version__)" || echo "no triton: the fused form runs its torch emulation"

echo "== (1) tests/test_s4_fused.py (fused kernels vs the float64 twin)"
timeout "$(left 120)" "$PY" -m pytest -q -rs tests/test_s4_fused.py 2>&1 | tee "$OUT/pytest_s4_fused.log"
echo "pytest exit ${PIPESTATUS[0]}"

echo "== (2) paper configuration, R = 16 runs per step, forms $FORMS (compiled)"
timeout "$(left 150)" "$PY" -m synthetic.bench --preset paper --runs 16 --conv "$FORMS" --methods "$METHODS" --iters 5 --warm 2 \
    --check-iters 0 ${BX[@]+"${BX[@]}"} --keep-previous --out "$JSON" || echo "R = 16 bench stopped (rows done are kept)"

OFFICIAL=()
if [ -f official_s4/S4/run_s4.py ]; then
    OFFICIAL=(--official-dir official_s4/S4 --official-iters 25,5)
    echo "== (3) paper configuration, single run, forms $FORMS, with the official code in the same call"
else
    echo "== (3) paper configuration, single run, forms $FORMS (official_s4/S4 not carried: no official timing)"
fi
timeout "$(left 150)" "$PY" -m synthetic.bench --preset paper --runs 1 --conv "$FORMS" --methods "$METHODS" --iters 10 --warm 2 \
    --check-iters 0 ${OFFICIAL[@]+"${OFFICIAL[@]}"} ${BX[@]+"${BX[@]}"} --keep-previous --out "$JSON" \
    || echo "R = 1 bench stopped (rows done are kept; the official time only if it finished)"

if (( $(left 1000) > 60 )); then
    echo "== (4) profile of the fused R = 16 Full step (where the time goes), $(left 1000) s left"
    timeout "$(left 100)" "$PY" scripts/profile_s4_step.py --runs 16 --method Full --conv fused --iters 3 --warm 2 \
        ${PROFILE_EXTRA:-} --out "$OUT/profile_fused_r16.txt" > "$OUT/profile_fused_r16.log" 2>&1 \
        && tail -40 "$OUT/profile_fused_r16.log" || echo "profile stopped (see $OUT/profile_fused_r16.log)"
fi

if (( $(left 1000) > 40 )); then
    echo "== (5) scaling table (eager), $(left 1000) s left"
    timeout "$(left 1000)" "$PY" -m synthetic.bench --scaling --device "${DEVICE:-cuda}" --no-compile --iters 3 --warm 1 \
        --rounds 1 ${SX[@]+"${SX[@]}"} --out "$OUT/figures/bench_s4_scaling_cuda.json" \
        || echo "scaling cut off (the table keeps the rows done)"
else
    echo "== (5) scaling table skipped: $(left 1000) s left"
fi

[ -f "$JSON" ] && "$PY" - "$JSON" <<'EOF'
import json, sys
from synthetic.s4.bench import load_reports
for r in load_reports(sys.argv[1]):
    off = (r.get("official") or {}).get("ms_per_iter")
    print(f"-- {r['device']} R={r['runs_per_step']} commit {r['commit']} copy {r.get('roofline', {}).get('copy_GBps')} GB/s"
          f" official {off} ms/iter{'' if r.get('complete', True) else ' (partial)'}")
    for row in r["results"]:
        rf = row.get("roofline", {})
        print(f"   {row.get('conv', r.get('conv')):9s} {row['method']:16s} {row['ms_per_iter']:9.3f} ms  peak "
              f"{row['peak_mem_gb']} GiB  bound {rf.get('traffic_bound_ms')} ms  x{rf.get('over_bound')}  "
              f"official/ours {row.get('official_over_ours')}")
EOF
echo "== done in $(( $(date +%s) - t0 )) s"

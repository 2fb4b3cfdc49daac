#!/usr/bin/env bash
# Issue 31's GPU check and measurement of the fused deep-S4 layer (synthetic/s4/fused.py) in one device call, the
# most informative steps first (every step under its own timeout, cut to what is left of TOTAL_S, default 400 s):
#   (1) pytest tests/test_s4_fused.py: the Triton kernels (every autotune config) against the float64 twin, values
#       and gradients, on CUDA (aimed at under a minute; capped at 90 s)
#   (2) python -m synthetic.bench, paper configuration, compiled, R = 16 runs per step: Frozen and Full with the
#       previous best form (toeplitz) and the fused one, peak memory and a roofline line per row
#   (3) a torch.profiler table of the fused R = 16 Full step (scripts/profile_s4_step.py): which kernel dominates
#   (4) the same as (2) at R = 1, every paper method (into the same JSON, figures/bench_s4_fused_cuda.json)
#   (5) with the time left: the unmodified official code timed against our Full step at R = 1 (OFFICIAL_RUNS=1,16:
#       and at R = 16, the issue's 150x target) in the same call, if
#       official_s4/S4 is carried (ignored folder: the official S4/ code, environment.py, stubs/wandb, einops under
#       official_s4/pylib; bash scripts/setup_official_s4.sh), into figures/bench_s4_fused_official_cuda.json;
#       one R takes ~170 s on a fresh H100 (2026-12-07: R = 1 172 s, both forms' compiles and autotuning + the
#       official code's two runs), so R = 16 alone wants TOTAL_S >= 240 and both R >= 420
#   (6) with the time left: (a) the same profile of the toeplitz form's step, (b) the scaling table on CUDA
#       (N 200/800/3200, D 64/256, every form incl. fused, eager) into figures/bench_s4_scaling_cuda.json (written
#       after every (N, D): a cut-off keeps its rows; a committed table of the same card is resumed, not redone)
# STEPS picks the steps (comma-separated, default 1,2,3,4,5,6a,6b; e.g. STEPS=5,6a,6b for what the 2026-12-06 calls
# left undone). The autotuner's choice per kernel is printed (TRITON_PRINT_AUTOTUNING=1). Needs no network. Logs and JSON go
# under $OUT (figures/ copies, *.log, summary printed at the end); GIT_COMMIT (or COMMIT) names the records' commit:
#   COMMIT=$(git rev-parse --short HEAD) OUT=$OUT bash scripts/gpu_s4_fused.sh   (repo root; OUT defaults to
#   ./out/gpu_s4_fused)
# Smoke test on a CPU (not a measurement): DEVICE=cpu BENCH_EXTRA="--preset tiny --device cpu --no-compile"
#   SCALING_EXTRA="--scaling-N 16 --scaling-D 4" PROFILE_EXTRA="--device cpu --batch 8 --no-compile" \
#   OUT=/tmp/gf bash scripts/gpu_s4_fused.sh
set -uo pipefail
OUT="${OUT:-out/gpu_s4_fused}"
mkdir -p "$OUT/figures"
exec > >(tee -a "$OUT/gpu_s4_fused.log") 2>&1
export PYTHONPATH="${PYTHONPATH:-}:." PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
PY="${PYTHON:-python}"
TOTAL_S="${TOTAL_S:-400}"  # the whole script's budget (s); each step gets min(its cap, what is left)
METHODS="Frozen,LoRA (Proj),LoRA (S4+Proj),SDT,SDT + LoRA,Full"
FORMS="${FORMS:-toeplitz,fused}"
JSON="$OUT/figures/bench_s4_fused_cuda.json"
OJSON="$OUT/figures/bench_s4_fused_official_cuda.json"  # its own file: a report of the same R would replace (4)'s
read -r -a BX <<< "${BENCH_EXTRA:-}"
read -r -a SX <<< "${SCALING_EXTRA:-}"
t0=$(date +%s)
STEPS="${STEPS:-1,2,3,4,5,6a,6b}"
OFFICIAL_RUNS="${OFFICIAL_RUNS:-1}"  # step 5's run counts, e.g. 1,16: the official code and both forms in one call
want() { [[ ",$STEPS," == *",$1,"* ]]; }  # is step $1 asked for?
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

if want 1; then
echo "== (1) tests/test_s4_fused.py (fused kernels vs the float64 twin)"
timeout "$(left 90)" "$PY" -m pytest -q -rs --durations=8 tests/test_s4_fused.py 2>&1 | tee "$OUT/pytest_s4_fused.log"
echo "pytest exit ${PIPESTATUS[0]}"
fi

want 2 && {
echo "== (2) paper configuration, R = 16 runs per step, Frozen and Full, forms $FORMS (compiled)"
timeout "$(left 200)" "$PY" -m synthetic.bench --preset paper --runs 16 --conv "$FORMS" --methods "Frozen,Full" \
    --iters 5 --warm 2 --check-iters 0 ${BX[@]+"${BX[@]}"} --keep-previous --out "$JSON" \
    || echo "R = 16 bench stopped (rows done are kept)"
}

if want 3 && (( $(left 1000) > 60 )); then
    echo "== (3) profile of the fused R = 16 Full step (where the time goes), $(left 1000) s left"
    timeout "$(left 120)" "$PY" scripts/profile_s4_step.py --runs 16 --method Full --conv fused --iters 3 --warm 2 \
        ${PROFILE_EXTRA:-} --out "$OUT/profile_fused_r16.txt" > "$OUT/profile_fused_r16.log" 2>&1 \
        && tail -45 "$OUT/profile_fused_r16.log" || { echo "profile stopped:"; tail -20 "$OUT/profile_fused_r16.log"; }
else
    want 3 && echo "== (3) profile skipped: $(left 1000) s left"
fi

want 4 && {
echo "== (4) paper configuration, single run, every method, forms $FORMS (compiled), $(left 1000) s left"
timeout "$(left 120)" "$PY" -m synthetic.bench --preset paper --runs 1 --conv "$FORMS" --methods "$METHODS" --iters 10 \
    --warm 2 --check-iters 0 ${BX[@]+"${BX[@]}"} --keep-previous --out "$JSON" \
    || echo "R = 1 bench stopped (rows done are kept)"
}

if want 5 && [ -f official_s4/S4/run_s4.py ] && (( $(left 1000) > 45 )); then
    for R in ${OFFICIAL_RUNS//,/ }; do  # each R's report in $OJSON (the others kept under 'previous')
        echo "== (5) the official code against our Full step, R = $R, forms $FORMS, $(left 1000) s left"
        timeout "$(left 1000)" "$PY" -m synthetic.bench --preset paper --runs "$R" --conv "$FORMS" --methods "Full" \
            --iters 10 --warm 2 --check-iters 0 --official-dir official_s4/S4 --official-iters 25,5 ${BX[@]+"${BX[@]}"} \
            --keep-previous --out "$OJSON" || echo "official timing stopped (the official time only if it finished)"
    done
else
    want 5 && echo "== (5) official timing skipped (official_s4/S4 carried? $( [ -f official_s4/S4/run_s4.py ] && echo yes || echo no ); $(left 1000) s left)"
fi

if want 6a && (( $(left 1000) > 100 )); then
    echo "== (6a) profile of the toeplitz R = 16 Full step (the same table for the previous form), $(left 1000) s left"
    timeout "$(left 120)" "$PY" scripts/profile_s4_step.py --runs 16 --method Full --conv toeplitz --iters 3 --warm 2 \
        ${PROFILE_EXTRA:-} --out "$OUT/profile_toeplitz_r16.txt" > "$OUT/profile_toeplitz_r16.log" 2>&1 \
        && tail -45 "$OUT/profile_toeplitz_r16.log" || { echo "profile stopped:"; tail -20 "$OUT/profile_toeplitz_r16.log"; }
fi

if want 6b && (( $(left 1000) > 40 )); then
    echo "== (6b) scaling table (eager), $(left 1000) s left"
    SJ="$OUT/figures/bench_s4_scaling_cuda.json"
    # the committed table, when it is of this card and setting, is finished, not timed again (--scaling-resume)
    FROM=()
    [ -f figures/bench_s4_scaling_cuda.json ] && FROM=(--scaling-from figures/bench_s4_scaling_cuda.json)
    timeout "$(left 1000)" "$PY" -m synthetic.bench --scaling --device "${DEVICE:-cuda}" --no-compile --iters 3 --warm 1 \
        --rounds 1 --scaling-resume ${FROM[@]+"${FROM[@]}"} ${SX[@]+"${SX[@]}"} --out "$SJ" \
        || echo "scaling cut off (the table keeps the rows done; the next call resumes it)"
else
    want 6b && echo "== (6b) scaling table skipped: $(left 1000) s left"
fi

for J in "$JSON" "$OJSON"; do [ -f "$J" ] && "$PY" - "$J" <<'EOF'
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
done
echo "== done in $(( $(date +%s) - t0 )) s"

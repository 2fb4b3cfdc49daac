#!/usr/bin/env bash
# Issue 19's GPU work in one device call (<= 10 minutes on one H200): the Theorem 1 training study
# (synthetic.s4_theorem1) at the paper's sizes, the linear and the ReLU variant in parallel on the one GPU, eager
# (the study's steps change shape between arms: compiling each shape would cost more than it saves in a call this
# short). Resumes from the results files in RESULTS (copy a previous call's files there first); each variant
# stops starting new run groups DEADLINE - 75 s after the start; then the summary JSON and figure are redrawn and
# everything is copied into $OUT.
# Usage: GIT_COMMIT=<sha> DEADLINE=540 bash scripts/gpu_theorem1.sh
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_t1}
RESULTS=${RESULTS:-figures}
DEADLINE=${DEADLINE:-540}
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-unknown}
T0=$SECONDS
mkdir -p "$OUT"
log() { echo "[gpu_theorem1 +$((SECONDS - T0))s] $*" | tee -a "$OUT/main.log"; }
log "commit $GIT_COMMIT, deadline ${DEADLINE}s"
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1 | tee -a "$OUT/main.log"
PIDS=()
for act in identity relu; do
    timeout $((DEADLINE - 20)) "$PY" -m synthetic.s4_theorem1 --preset paper --activation "$act" --no-compile \
        --out "$RESULTS" --time-budget $((DEADLINE - 75)) >"$OUT/theorem1_$act.log" 2>&1 &
    PIDS+=($!)
done
for p in "${PIDS[@]}"; do wait "$p" || log "a variant exited with $?"; done
log "sweeps done"
"$PY" -m synthetic.s4_theorem1 --preset paper --plot-only --out "$RESULTS" 2>&1 | tee "$OUT/summary.log"
cp "$RESULTS"/theorem1_training* "$OUT"/ 2>/dev/null || true
log "end"

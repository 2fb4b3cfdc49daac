#!/usr/bin/env bash
# Issue 19's GPU work in one device call (<= 10 minutes on one H200): the Theorem 1 training study
# (synthetic.s4_theorem1) at the paper's sizes, its jobs in parallel on the one GPU, eager (the study's steps change
# shape between arms: compiling each shape would cost more than it saves in a call this short). JOBS: one job per
# line, "activation precision arms" (arms comma-separated, spaces as '_'; "all" for every arm). Resumes from the
# results files in RESULTS (copy a previous call's files there first); every job stops starting new run groups
# DEADLINE - 75 s after the start; then the summary JSON and figure are redrawn and the results, the summary and
# one combined log are copied into $OUT (few files: the device returns a limited number).
# Usage: GIT_COMMIT=<sha> DEADLINE=540 JOBS=$'identity tf32 all\nrelu tf32 all' bash scripts/gpu_theorem1.sh
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_t1}
RESULTS=${RESULTS:-figures}
DEADLINE=${DEADLINE:-540}
JOBS=${JOBS:-$'identity tf32 all\nrelu tf32 all'}
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-unknown}
T0=$SECONDS
mkdir -p "$OUT" logs_t1
log() { echo "[gpu_theorem1 +$((SECONDS - T0))s] $*" | tee -a logs_t1/main.log; }
log "commit $GIT_COMMIT, deadline ${DEADLINE}s"
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1 | tee -a logs_t1/main.log
PIDS=()
i=0
while read -r act prec arms; do
    [[ -z "$act" ]] && continue
    extra=()
    [[ "$arms" != "all" ]] && extra=(--arms "${arms//_/ }")
    log "job $i: activation $act, precision $prec, arms $arms"
    timeout $((DEADLINE - 20)) "$PY" -m synthetic.s4_theorem1 --preset paper --activation "$act" --precision "$prec" \
        --no-compile "${extra[@]}" --out "$RESULTS" --time-budget $((DEADLINE - 75)) >"logs_t1/job$i.log" 2>&1 &
    PIDS+=($!)
    i=$((i + 1))
done <<< "$JOBS"
for p in "${PIDS[@]}"; do wait "$p" || log "job exited with $?"; done
log "jobs done"
"$PY" -m synthetic.s4_theorem1 --preset paper --plot-only --out "$RESULTS" >logs_t1/summary.log 2>&1 || log "summary failed"
cp "$RESULTS"/theorem1_training_paper_*.jsonl "$RESULTS"/theorem1_training.json "$RESULTS"/theorem1_training.png \
    "$RESULTS"/theorem1_training.pdf "$OUT"/ 2>/dev/null || true
for f in logs_t1/*.log; do echo "=== $f"; tr '\r' '\n' < "$f" | grep -v '^\s*$' | tail -60; done > "$OUT/logs.txt"
log "end"

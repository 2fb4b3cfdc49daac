#!/usr/bin/env bash
# The hybrid (attention + Mamba-I) GPU work of issue 23 in one device call, from the repo root of a copy of the tree:
#   1. pick the Mamba backend: mamba-ssm if importable (or installable from $WHEELS, e.g. build/wheels left by
#      scripts/build_mamba_ssm.sh on a warm machine), else the pure-torch reference scan on CUDA;
#   2. pytest tests/test_hybrid_gpu.py (CUDA reference stack vs float64 CPU; mamba_ssm vs reference where built);
#   3. the paper preset (python -m synthetic.hybrid_regression --preset paper: Jamba's 1 attention : 7 Mamba layout)
#      in $SHARDS processes on the one GPU, each stopping new runs after $SWEEP_BUDGET s, merged; then the lr-extension
#      rounds in one process for $EXTEND_BUDGET s (once the base grid is complete; a call that finds the base grid
#      complete skips the shards and gives that process both budgets: the runner plans extension rounds in one
#      process, so they do not spread over shards); summary table and figure.
# Time-budgeted and resumable: the sweep resumes from $RESULTS/hybrid_regression_paper.jsonl in the tree. After a call,
# copy $OUT/hybrid_regression_paper.jsonl to figures/ (commit it) and run the script again until the log says
# "sweep complete". Expected: ~4 min per call (worst ~5: a run in progress at the budget finishes). Estimated, not
# measured (no GPU was lent to the author): ~30-45 s per run on the reference backend, a few s with mamba-ssm;
# the base grid (104 runs: 17 budgets x 3 lrs x 2 seeds + Frozen) takes ~3-4 calls on the reference backend with 8
# shards, then each lr-extension run (serial) ~40 s: a few more calls; with mamba-ssm ~1-2 calls in all.
#
#   GIT_COMMIT=<sha> bash scripts/gpu_hybrid.sh
# Environment (defaults): OUT=out/gpu_hybrid PYTHON=python3 WHEELS=build/wheels STEPS=test,sweep
#   BACKEND=detect (or mamba_ssm | reference: keep it the same across calls; it is part of every run key)
#   SHARDS=8 SWEEP_BUDGET=120 EXTEND_BUDGET=45 (s) SEEDS=0,1 PRESET=paper RESULTS=figures SWEEP_ARGS=""
set -euo pipefail

PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_hybrid}
WHEELS=${WHEELS:-build/wheels}
STEPS=${STEPS:-test,sweep}
SHARDS=${SHARDS:-8}
SWEEP_BUDGET=${SWEEP_BUDGET:-120}
EXTEND_BUDGET=${EXTEND_BUDGET:-45}
SEEDS=${SEEDS:-0,1}
PRESET=${PRESET:-paper}
RESULTS=${RESULTS:-figures}
BACKEND=${BACKEND:-detect}
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT" "$RESULTS"
LOG="$OUT/gpu_hybrid.log"
T0=$SECONDS
FAILED=()
log() { echo "[gpu_hybrid +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
step_rc() { [[ "$1" == 0 ]] || FAILED+=("$2 (rc $1)"); log "$2: rc $1"; }
clean() { tr '\r' '\n' | grep -v -e '^USDT:' -e 'it/s\]$' -e 's/it\]$' || true; }

log "commit $GIT_COMMIT, steps $STEPS, $($PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "NO GPU")' 2>&1)"

if [[ "$BACKEND" == detect ]]; then
    if ! "$PY" -c "import mamba_ssm" 2>/dev/null && ls "$WHEELS"/mamba_ssm-*.whl >/dev/null 2>&1; then
        WHL=("$WHEELS"/mamba_ssm-*.whl)
        ls "$WHEELS"/causal_conv1d-*.whl >/dev/null 2>&1 && WHL+=("$WHEELS"/causal_conv1d-*.whl)
        rc=0; "$PY" -m pip install -q --no-deps --no-index "${WHL[@]}" 2>&1 | tee -a "$LOG" || rc=$?
        step_rc "$rc" "install mamba-ssm wheels"
    fi
    if "$PY" -c "import mamba_ssm" 2>/dev/null; then BACKEND=mamba_ssm; else BACKEND=reference; fi
fi
log "backend $BACKEND (part of the run keys: pass BACKEND=$BACKEND on the next call)"

if has test; then
    rc=0; "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_hybrid_gpu.py 2>&1 | tee -a "$LOG" || rc=$?
    step_rc "$rc" "pytest tests/test_hybrid_gpu.py"
fi

if has sweep; then
    ARGS=(--preset "$PRESET" --backend "$BACKEND" --seeds "$SEEDS" --out "$RESULTS")
    log "sweep: $PRESET preset, seeds $SEEDS, $SHARDS shards x ${SWEEP_BUDGET}s"
    "$PY" -m synthetic.hybrid_regression "${ARGS[@]}" --dry-run 2>&1 | tee "$OUT/plan.txt" | tee -a "$LOG" || true
    if grep -q "^0 base-grid runs to do" "$OUT/plan.txt"; then  # only lr extensions left: one process gets it all
        log "base grid complete: no shards; the extension step gets $SWEEP_BUDGET + $EXTEND_BUDGET s"
        EXTEND_BUDGET=$((SWEEP_BUDGET + EXTEND_BUDGET)); SHARDS=0
    fi
    PIDS=()
    for ((i = 0; i < SHARDS; i++)); do
        # shellcheck disable=SC2086
        OMP_NUM_THREADS=2 "$PY" -m synthetic.hybrid_regression "${ARGS[@]}" --shard "$i/$SHARDS" \
            --time-budget-s "$SWEEP_BUDGET" ${SWEEP_ARGS:-} >"$OUT/shard$i.log" 2>&1 &
        PIDS+=($!)
    done
    for p in "${PIDS[@]+"${PIDS[@]}"}"; do rc=0; wait "$p" || rc=$?; step_rc "$rc" "shard process $p"; done
    for ((i = 0; i < SHARDS; i++)); do { echo "---- shard $i"; clean <"$OUT/shard$i.log"; } >>"$LOG"; rm -f "$OUT/shard$i.log"; done
    rc=0; "$PY" -m synthetic.hybrid_regression "${ARGS[@]}" --merge 2>&1 | clean | tee -a "$LOG" || rc=$?
    step_rc "$rc" merge
    log "extend: lr-extension rounds (one process; only once the base grid is complete), ${EXTEND_BUDGET}s"
    # shellcheck disable=SC2086
    rc=0; "$PY" -m synthetic.hybrid_regression "${ARGS[@]}" --time-budget-s "$EXTEND_BUDGET" ${SWEEP_ARGS:-} 2>&1 \
        | clean | tee -a "$LOG" || rc=$?
    step_rc "$rc" extend
    "$PY" -m synthetic.hybrid_regression "${ARGS[@]}" --dry-run 2>&1 | tee "$OUT/plan.txt" | tee -a "$LOG" || true
    if grep -q "^0 base-grid runs to do, 0 lr-extension runs next" "$OUT/plan.txt"; then log "sweep complete"; \
        else log "sweep not complete: run the script again (after copying the results file back)"; fi
    for f in "hybrid_regression_$PRESET.jsonl" "hybrid_mse_vs_params_$PRESET.png" "hybrid_mse_vs_params_$PRESET.pdf"; do
        [[ -f "$RESULTS/$f" ]] && cp "$RESULTS/$f" "$OUT/"
    done
fi

log "done in $((SECONDS - T0)) s; failed: ${FAILED[*]:-none}"
ls -la "$OUT" | tee -a "$LOG"
[[ ${#FAILED[@]} == 0 ]]

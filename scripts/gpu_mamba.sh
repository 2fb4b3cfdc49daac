#!/usr/bin/env bash
# The Mamba GPU work of issue 12 in one device call (<= 10 minutes on one H200), run from the repo root:
#   install the built mamba-ssm / causal-conv1d wheels, run tests/test_mamba_gpu.py, run the Table 2 bench
#   (official + equal-budget configurations, fused and unfused, with --profile), run the paper-preset
#   sweep in SHARDS parallel processes on the one GPU within SWEEP_BUDGET seconds (resumable: run the
#   script again, STEPS=sweep, to continue), merge the shard files, and a small fused-vs-unfused check.
# Everything is logged to $OUT/gpu_mamba.log; result files are copied into $OUT (at most 8 files come back).
#
# Build first (separate call, ~2 + ~6 min; wheels land in build/wheels, which stays on the warm machine
# as long as `build` is not carried):
#   WITH_CAUSAL_CONV1D=1 MAX_JOBS=16 INSTALL=1 PYTHON=python3 bash scripts/build_mamba_ssm.sh .whl build/wheels
# Then:
#   GIT_COMMIT=<sha> bash scripts/gpu_mamba.sh
# Environment (defaults):
#   STEPS=install,test,bench,sweep,check   which steps to run (also: build; extend = after the sharded
#                                          sweep's merge, the lr-extension rounds in one process, EXTEND_BUDGET s)
#   PYTHON=python3   WHEELS=build/wheels   SHARDS=6   SEEDS=0,1,2   SWEEP_BUDGET=300 (s, per shard)
#   SWEEP_ARGS=""  extra mamba_regression options   BENCH_ARGS=""  extra mamba_bench options
#   RESULTS=figures  where the sweep / bench files live (the committed ones resume)
#   PRESET=paper BACKEND=mamba_ssm  (PRESET=tiny BACKEND=reference STEPS=sweep,check: a CPU dry run)
set -uo pipefail

PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu_mamba}
WHEELS=${WHEELS:-build/wheels}
STEPS=${STEPS:-install,test,bench,sweep,check}
SHARDS=${SHARDS:-6}
SEEDS=${SEEDS:-0,1,2}
SWEEP_BUDGET=${SWEEP_BUDGET:-300}
RESULTS=${RESULTS:-figures}
PRESET=${PRESET:-paper}
BACKEND=${BACKEND:-mamba_ssm}
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT" "$RESULTS"
LOG="$OUT/gpu_mamba.log"
T0=$SECONDS
FAILED=()
log() { echo "[gpu_mamba +$((SECONDS - T0))s] $*" | tee -a "$LOG"; }
has() { [[ ",$STEPS," == *",$1,"* ]]; }
step_rc() { [[ "$1" == 0 ]] || FAILED+=("$2 (rc $1)"); log "$2: rc $1"; }

log "commit $GIT_COMMIT, steps $STEPS, python $($PY --version 2>&1)"

if has build; then
    WITH_CAUSAL_CONV1D=1 INSTALL=1 PYTHON="$PY" bash scripts/build_mamba_ssm.sh .whl "$WHEELS" 2>&1 | tee -a "$LOG"
    step_rc "${PIPESTATUS[0]}" build
fi

if has install; then
    for pkg in mamba_ssm causal_conv1d; do
        if "$PY" -c "import $pkg" 2>/dev/null; then
            log "$pkg already importable"
        elif ls "$WHEELS"/$pkg-*.whl >/dev/null 2>&1; then
            "$PY" -m pip install -q --no-deps --no-index "$WHEELS"/$pkg-*.whl 2>&1 | tee -a "$LOG"
            step_rc "${PIPESTATUS[0]}" "install $pkg"
        else
            log "no $WHEELS/$pkg-*.whl: $pkg not installed"
        fi
    done
    if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
        "$PY" -m pip install -q --no-index --find-links .whl/py pytest hypothesis 2>&1 | tee -a "$LOG"
        step_rc "${PIPESTATUS[0]}" "install pytest"
    fi
    "$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for m in ("mamba_ssm", "causal_conv1d"):
    spec = importlib.util.find_spec(m)
    print(m, "installed" if spec else "MISSING", getattr(__import__(m), "__version__", "") if spec else "")
from synthetic.mamba_peft import get_backend
print("fused mamba_inner_fn available:", get_backend("mamba_ssm", fused=True).inner_fn is not None)
EOF
fi

if has test; then
    log "pytest tests/test_mamba_gpu.py"
    "$PY" -m pytest -q -rs tests/test_mamba_gpu.py 2>&1 | tee -a "$LOG"
    step_rc "${PIPESTATUS[0]}" "pytest gpu"
fi

if has bench; then
    log "bench: official + equal-budget, fused + unfused, profile"
    # shellcheck disable=SC2086
    "$PY" -m synthetic.mamba_bench --preset "$PRESET" --backend "$BACKEND" --profile --out "$RESULTS" ${BENCH_ARGS:-} 2>&1 \
        | grep -v '^USDT:' | tee -a "$LOG"
    step_rc "${PIPESTATUS[0]}" bench
    cp "$RESULTS/bench_mamba.json" "$RESULTS/bench_mamba_profile.txt" "$OUT/" 2>/dev/null
fi

if has sweep || has check; then
    PIDS=()
    rm -f /tmp/gpu_mamba_shard*.log /tmp/gpu_mamba_check_*.log
    if has sweep; then
        log "sweep: paper preset, seeds $SEEDS, $SHARDS shards, ${SWEEP_BUDGET}s budget each"
        for ((i = 0; i < SHARDS; i++)); do
            # shellcheck disable=SC2086
            OMP_NUM_THREADS=2 "$PY" -m synthetic.mamba_regression --preset "$PRESET" --backend "$BACKEND" --seeds "$SEEDS" \
                --out "$RESULTS" --shard "$i/$SHARDS" --time-budget-s "$SWEEP_BUDGET" ${SWEEP_ARGS:-} \
                >"/tmp/gpu_mamba_shard$i.log" 2>&1 &
            PIDS+=($!)
        done
    fi
    if has check; then
        # fused vs unfused on the same runs, each in its own folder (these records must not count as seeds)
        log "check: SDT and LoRA (S6+Proj), smallest budgets, seed 0, lr 1e-2, fused and unfused"
        for fz in true false; do
            rm -rf "/tmp/gpu_mamba_check_$fz"
            OMP_NUM_THREADS=2 "$PY" -m synthetic.mamba_regression --preset "$PRESET" --backend "$BACKEND" --fused $fz \
                --seeds 0 --lrs 1e-2 --methods "SDT,LoRA (S6+Proj)" --sdt-channels "${CHECK_CHANNELS:-16}" \
                --lora-ranks 1 --out "/tmp/gpu_mamba_check_$fz" >"/tmp/gpu_mamba_check_$fz.log" 2>&1 &
            PIDS+=($!)
        done
    fi
    for p in "${PIDS[@]}"; do wait "$p"; step_rc "$?" "process $p"; done
    for f in /tmp/gpu_mamba_shard*.log /tmp/gpu_mamba_check_*.log; do
        [[ -f "$f" ]] && { echo "---- $f" ; grep -v '^USDT:' "$f" | tr '\r' '\n' | grep -v 'mamba runs \[' ; } >>"$LOG"
    done
    if has sweep; then
        "$PY" -m synthetic.mamba_regression --preset "$PRESET" --backend "$BACKEND" --seeds "$SEEDS" --out "$RESULTS" \
            --merge 2>&1 | tee -a "$LOG"
        step_rc "${PIPESTATUS[0]}" merge
        if has extend; then  # lr-extension rounds: one process (shards run the base grid only)
            log "extend: lr-extension rounds of the merged results, ${EXTEND_BUDGET:-240}s budget"
            # shellcheck disable=SC2086
            "$PY" -m synthetic.mamba_regression --preset "$PRESET" --backend "$BACKEND" --seeds "$SEEDS" \
                --out "$RESULTS" --time-budget-s "${EXTEND_BUDGET:-240}" ${SWEEP_ARGS:-} 2>&1 \
                | tr '\r' '\n' | grep -v '^USDT:' | grep -v 'it/s\]$' | tee -a "$LOG"
            step_rc "${PIPESTATUS[0]}" extend
        fi
        cp "$RESULTS/mamba_regression_$PRESET.jsonl" "$RESULTS/mamba_mse_vs_params_$PRESET.png" \
            "$RESULTS/mamba_loss_curves_$PRESET.png" "$OUT/" 2>/dev/null
    fi
    if has check; then
        "$PY" - /tmp/gpu_mamba_check_true /tmp/gpu_mamba_check_false "$OUT/mamba_fused_check.json" <<'EOF' 2>&1 | tee -a "$LOG"
import glob, json, sys
from synthetic.results import ResultsFile
load = lambda d: [r for f in glob.glob(d + "/mamba_regression_*.jsonl") for r in ResultsFile(f).runs()]
fused, unfused = load(sys.argv[1]), load(sys.argv[2])
json.dump({"fused_requested": fused, "unfused": unfused}, open(sys.argv[3], "w"), indent=1)
by = {(r["method"], r["budget_label"], r["lr"], r["seed"]): r for r in unfused}
for r in fused:
    u = by.get((r["method"], r["budget_label"], r["lr"], r["seed"]))
    if u is None or None in (u.get("best_mse"), r.get("best_mse")):
        print("fused-vs-unfused:", r["method"], r["budget_label"], "no pair of finished runs")
        continue
    print(f"fused-vs-unfused: {r['method']:<16} {r['budget_label']:<12} fused={r.get('fused')} best {r['best_mse']:.6g}"
          f" | fused={u.get('fused')} best {u['best_mse']:.6g} | rel diff "
          f"{abs(r['best_mse'] - u['best_mse']) / u['best_mse']:.2e}; final {r['final_mse']:.6g} vs {u['final_mse']:.6g}")
EOF
    fi
fi

log "done in $((SECONDS - T0)) s; failed: ${FAILED[*]:-none}"
ls -la "$OUT" | tee -a "$LOG"
[[ ${#FAILED[@]} == 0 ]]

#!/usr/bin/env bash
# Issue 20's GPU work in one device call (<= 10 minutes on one H200), every job in parallel on the one GPU,
# run from the repo root. Each call resumes from the results files it is given and stops every job at
# DEADLINE seconds (the sweeps' own time budgets end them a little earlier, `timeout` is the backstop), then
# folds each experiment's per-process files into one and copies it into $OUT:
#   1. the official preset's lr-extension rounds (figures/s4_regression_official.jsonl);
#   2. the S4 paper preset with every method (--methods all; batch 1000, the batch of the committed
#      figures/s4_regression_paper.jsonl, whose records it reuses) in S4_PROCS processes, each one a subset of
#      methods (the records are keyed by method, budget, lr and seed, so the files union without conflicts):
#      RESULTS/peft_methods_s4_paper.jsonl;
#   3. mamba-ssm built from ../.whl (or SDIST_DIR) if not importable, then the Mamba paper preset with every
#      method in one process per method/budget subset (the core methods' records come from
#      figures/mamba_regression_paper.jsonl): RESULTS/peft_methods_mamba_paper.jsonl.
# A process per subset, not --shard: each one also runs its own lr-extension rounds.
# Usage: GIT_COMMIT=<sha> DEADLINE=540 bash scripts/gpu_issue20.sh
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-out/gpu20}
RESULTS=${RESULTS:-figures}
DEADLINE=${DEADLINE:-540}
SDIST_DIR=${SDIST_DIR:-../.whl}
STEPS=${STEPS:-official,s4,mamba}
export PYTHONUNBUFFERED=1 GIT_COMMIT=${GIT_COMMIT:-unknown}
T0=$SECONDS
W=run  # per-process result folders
mkdir -p "$OUT" logs "$W"
log() { echo "[gpu_issue20 +$((SECONDS - T0))s] $*" | tee -a logs/main.log; }
left() { echo $((DEADLINE - (SECONDS - T0))); }
has() { [[ ",$STEPS," == *",$1,"* ]]; }

union() {  # union TARGET SRC...: every record of the SRC files into TARGET (keys unique)
    "$PY" - "$@" <<'EOF'
import sys
from pathlib import Path
from synthetic.results import ResultsFile
target, srcs = ResultsFile(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
recs = [r for p in srcs if p.exists() for r in ResultsFile(p).load()]
n0 = len(target.completed_keys())
target.extend(recs)
print(f"union: {target.path}: {n0} -> {len(target.completed_keys())} records")
EOF
}

log "commit $GIT_COMMIT, steps $STEPS, deadline ${DEADLINE}s"
"$PY" -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name(0))' 2>&1 | tee -a logs/main.log
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 30 >logs/smi.log 2>&1 &
SMI=$!
PIDS=()

if has official; then
    timeout "$(left)" "$PY" -m synthetic.s4_regression --preset official --precision tf32 --out "$RESULTS" \
        --time-budget $(( $(left) - 45 )) >logs/official.log 2>&1 &
    PIDS+=($!)
fi

S4_SUBSETS=("Prompt tuning,Prefix-tuning" "Initial-state tuning,State-offset tuning,BitFit,DoRA (Proj),Additional-scan"
            "Frozen,LoRA (Proj),LoRA (S4+Proj),SDT,SDT + LoRA,Full")
if has s4; then
    [[ -f "$RESULTS/peft_methods_s4_paper.jsonl" ]] || cp "$RESULTS/s4_regression_paper.jsonl" "$RESULTS/peft_methods_s4_paper.jsonl"
    for i in "${!S4_SUBSETS[@]}"; do
        d="$W/s4_$i"; mkdir -p "$d"
        # the core-only subset writes s4_regression_paper.jsonl (paths() names the file by the methods)
        f=peft_methods_s4_paper.jsonl; [[ $i == 2 ]] && f=s4_regression_paper.jsonl
        cp "$RESULTS/peft_methods_s4_paper.jsonl" "$d/$f"
        timeout "$(left)" "$PY" -m synthetic.s4_regression --preset paper --batch 1000 --seeds 0,1,2 \
            --methods "${S4_SUBSETS[$i]}" --out "$d" --time-budget $(( $(left) - 40 )) >"logs/s4_$i.log" 2>&1 &
        PIDS+=($!)
    done
fi

M_SUBSETS=("--methods Prompt tuning --prompt-lens 32,64" "--methods Prompt tuning --prompt-lens 128,256"
           "--methods Prefix-tuning --prefix-lens 8,16" "--methods Prefix-tuning --prefix-lens 32,64"
           "--methods DoRA (Proj) --dora-ranks 1,2" "--methods DoRA (Proj) --dora-ranks 4,8"
           "--methods Additional-scan" "--methods Initial-state tuning,State-offset tuning,BitFit")
if has mamba; then
    (
        if ! "$PY" -c "import mamba_ssm" 2>/dev/null; then
            MAX_JOBS=${MAX_JOBS:-12} INSTALL=1 PYTHON="$PY" bash scripts/build_mamba_ssm.sh "$SDIST_DIR" /tmp/wheels
        fi
        "$PY" -c "import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__)" || exit 1
        [[ -f "$RESULTS/peft_methods_mamba_paper.jsonl" ]] || cp "$RESULTS/mamba_regression_paper.jsonl" "$RESULTS/peft_methods_mamba_paper.jsonl"
        MP=()
        for i in "${!M_SUBSETS[@]}"; do
            d="$W/mamba_$i"; mkdir -p "$d"
            cp "$RESULTS/peft_methods_mamba_paper.jsonl" "$d/"
            m=${M_SUBSETS[$i]#--methods }; m=${m%% --*}; rest=${M_SUBSETS[$i]#--methods "$m"}
            # shellcheck disable=SC2086
            OMP_NUM_THREADS=1 timeout "$(left)" "$PY" -m synthetic.mamba_regression --preset paper --backend mamba_ssm \
                --seeds 0,1,2 --methods "$m" $rest --out "$d" --time-budget-s $(( $(left) - 50 )) \
                >"logs/mamba_$i.log" 2>&1 &
            MP+=($!)
        done
        for p in "${MP[@]}"; do wait "$p"; echo "mamba process $p: rc $?"; done
    ) >logs/mamba_main.log 2>&1 &
    PIDS+=($!)
fi

for p in "${PIDS[@]}"; do wait "$p"; log "process $p: rc $?"; done
kill "$SMI" 2>/dev/null

if has s4; then
    union "$RESULTS/peft_methods_s4_paper.jsonl" "$W"/s4_*/peft_methods_s4_paper.jsonl "$W/s4_2/s4_regression_paper.jsonl" 2>&1 | tee -a logs/main.log
    cp "$RESULTS/peft_methods_s4_paper.jsonl" "$OUT/"
fi
if has mamba && ls "$W"/mamba_*/peft_methods_mamba_paper.jsonl >/dev/null 2>&1; then
    union "$RESULTS/peft_methods_mamba_paper.jsonl" "$W"/mamba_*/peft_methods_mamba_paper.jsonl 2>&1 | tee -a logs/main.log
    cp "$RESULTS/peft_methods_mamba_paper.jsonl" "$OUT/"
    w=$(ls /tmp/wheels/mamba_ssm-*.whl 2>/dev/null | head -1)
    [[ -n "$w" ]] && ls -la "$w" | tee -a logs/main.log
fi
has official && cp "$RESULTS/s4_regression_official.jsonl" "$OUT/"
log "done in $((SECONDS - T0)) s"
tar czf "$OUT/logs.tar.gz" logs
ls -la "$OUT"

#!/usr/bin/env bash
# Issue 28 item 5 in one device call (one H100 or H200 with mamba-ssm and causal-conv1d installed; about 3 minutes,
# each step under its own timeout):
#   (i)  tests/test_ssm_peft_gpu.py: transformers' Mamba-1 and Mamba-2, fused vs unfused path with SDLoRA (logits,
#        loss, every gradient), and SDT on mamba-ssm's Mamba block
#   (ii) python -m ssm_peft.bench --preset paper: Table 2 on MambaForCausalLM (130M shape), fused and unfused rows,
#        into $OUT/bench_real_models.json (commit it as figures/bench_real_models.json, then
#        python -m ssm_peft.bench --summary prints the docs/benchmarks.md row)
# peft and transformers: wheels in .whl/ or .whl2/ (peft-0.21.2, transformers-5.24.0: the tested range, 14 MiB together;
# carried by naming .whl in carry) are installed with --target first, else the machine's are used, and
# SSM_PEFT_UNTESTED_VERSIONS=1 lets ssm_peft run outside its tested range (transformers 5.17 passed the CPU tests of
# ssm_peft/bench and paths; the versions go into the log and the report). Needs the machine's huggingface-hub >= 1.31
# and tokenizers 0.23 for transformers 5.24 (the image had 1.33 / 0.23.2).
#   bash scripts/gpu_ssm_peft.sh         (from the repo root; OUT defaults to ./out/gpu_ssm_peft)
# STEPS=tests (or bench) runs one of the two steps (default: both).
# smoke test on a CPU (not a measurement): BENCH_ARGS="--preset tiny --rounds 1" bash scripts/gpu_ssm_peft.sh
set -uo pipefail
OUT="${OUT:-out/gpu_ssm_peft}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_ssm_peft.log") 2>&1
PY="${PYTHON:-python3}"
WHEELS=""
for d in .whl .whl2; do  # the first carried folder that holds them (docs/gpu.md: .whl2 for a second, chained call)
    [ -z "$WHEELS" ] && WHEELS=$(ls "$d"/peft-*.whl "$d"/transformers-*.whl 2>/dev/null)
done
if [ -n "$WHEELS" ]; then
    # shellcheck disable=SC2086
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/ssm_peft_site $WHEELS \
        && export PYTHONPATH="/tmp/ssm_peft_site:${PYTHONPATH:-}"
fi
export PYTHONPATH=".:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 SSM_PEFT_UNTESTED_VERSIONS=1
read -r -a BX <<< "${BENCH_ARGS:---preset paper --steps 5 --rounds 5 --time-budget 120}"
echo "== gpu_ssm_peft.sh $(date -u +%FT%TZ) commit ${GIT_COMMIT:-unknown}"
"$PY" - <<'EOF'
import importlib.metadata as md, torch
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
for p in ("torch", "transformers", "peft", "mamba_ssm", "causal_conv1d", "triton"):
    try:
        print(p, md.version(p))
    except md.PackageNotFoundError:
        print(p, "not installed")
EOF
STEPS="${STEPS:-tests,bench}"
want() { [[ ",$STEPS," == *",$1,"* ]]; }
if want tests; then
    echo "== (i) GPU tests"
    timeout "${TEST_TIMEOUT:-150}" "$PY" -m pytest -q -rs --durations=5 -p no:cacheprovider tests/test_ssm_peft_gpu.py \
        --junitxml "$OUT/gpu_tests.xml" || echo "GPU tests: failed or stopped (exit $?)"
fi
if want bench; then
    echo "== (ii) Table 2 on MambaForCausalLM"
    timeout "${BENCH_TIMEOUT:-240}" "$PY" -m ssm_peft.bench "${BX[@]}" --out "$OUT/bench_real_models.json" \
        || echo "bench: failed or stopped (exit $?)"
    [ -f "$OUT/bench_real_models.json" ] && "$PY" -m ssm_peft.bench --summary --out "$OUT/bench_real_models.json"
fi
echo "== done $(date -u +%FT%TZ)"

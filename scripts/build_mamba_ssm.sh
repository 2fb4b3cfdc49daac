#!/usr/bin/env bash
# Build mamba-ssm (and optionally causal-conv1d) wheels from their sdists for the local GPU only.
#
# Why: mamba-ssm's setup.py hard-codes nine GPU architectures (sm_75 ... sm_121), so a stock
# source build compiles the selective-scan kernels nine times (half an hour). This script edits
# the sdist's setup.py so that only the architecture of GPU 0 (or $TORCH_CUDA_ARCH_LIST) is
# compiled, then runs `pip wheel --no-deps --no-build-isolation` (works without a package index:
# torch, setuptools, packaging, ninja must already be installed). Measured on one H100 (sm_90):
# mamba-ssm 2.3.2.post1 in ~132 s, causal-conv1d 1.7.0 in ~359 s (see docs/EXPERIMENTS.md).
#
# Usage:  scripts/build_mamba_ssm.sh [SDIST_DIR] [WHEEL_DIR]
#   SDIST_DIR  folder holding mamba_ssm-*.tar.gz (and causal_conv1d-*.tar.gz)   default: .whl
#   WHEEL_DIR  where the wheels go                                               default: SDIST_DIR
# Environment:
#   ARCH=9.0                  compute capability to build for (default: detected from GPU 0)
#   MAX_JOBS=16               parallel compile jobs (default: number of CPUs)
#   WITH_CAUSAL_CONV1D=1      also build causal-conv1d (optional; Mamba falls back to nn.Conv1d)
#   INSTALL=1                 pip install the built wheels (--no-deps --no-index)
# Get the sdists on a machine with an index (CPU torch, setuptools, wheel, ninja are enough):
#   MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE \
#   CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps --no-binary :all: --no-build-isolation \
#       mamba-ssm==2.3.2.post1 causal-conv1d==1.6.2.post1 -d .whl
# causal-conv1d 1.6.2.post1: mamba-ssm 2.3.2.post1 calls causal_conv1d.cpp_functions.causal_conv1d_{fwd,bwd,
# update}_function (same signatures in 1.5.x and 1.6.x); 1.6.x's setup.py knows CUDA 13 and puts its
# first -gencode pair unconditionally in the CUDA branch, which patch_setup needs (1.5.3 puts it under
# `if cuda <= 12.9`, so patch_setup refuses it). Keep one sdist per package in SDIST_DIR (newest is used).
set -euo pipefail

SDIST_DIR=$(realpath "${1:-.whl}")
WHEEL_DIR=$(realpath -m "${2:-$SDIST_DIR}")
mkdir -p "$WHEEL_DIR"
PY=${PYTHON:-python}

if [[ -z "${ARCH:-}" ]]; then
    ARCH=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(0); print(f"{m}.{n}")') || {
        echo "build_mamba_ssm: no CUDA GPU visible; set ARCH (e.g. ARCH=9.0) to build anyway" >&2; exit 1; }
fi
SM=${ARCH/./}
export TORCH_CUDA_ARCH_LIST="$ARCH"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE   # never try to download a prebuilt wheel
export MAMBA_KEEP_CUDA_BUILD=TRUE                              # read by newer releases; harmless otherwise
unset MAMBA_SKIP_CUDA_BUILD CAUSAL_CONV1D_SKIP_CUDA_BUILD
echo "build_mamba_ssm: arch sm_$SM, MAX_JOBS=$MAX_JOBS, nvcc: $(nvcc --version | tail -1)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# Replace the architecture list in setup.py by the one architecture we build for. The stock file
# appends "-gencode arch=compute_XX,code=sm_XX" pairs to `cc_flag` (some under CUDA-version ifs);
# the first pair sits unconditionally in the CUDA branch, so we put our pair in its place and turn
# every other pair into `pass`. Fails loudly if the file no longer has that shape.
patch_setup() {  # $1: setup.py
    "$PY" - "$1" "$SM" <<'EOF'
import re, sys
path, sm = sys.argv[1], sys.argv[2]
lines = open(path).read().splitlines(keepends=True)
arch = re.compile(r'cc_flag\.append\("arch=compute_\d+a?,code=sm_\d+a?"\)')
out, n_arch, i = [], 0, 0
while i < len(lines):
    s = lines[i].strip()
    nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
    if s == 'cc_flag.append("-gencode")' and arch.fullmatch(nxt):
        ind = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        if n_arch == 0:  # keep the position and indentation of the first pair
            out.append(f'{ind}cc_flag += ["-gencode", "arch=compute_{sm},code=sm_{sm}"]  # build_mamba_ssm.sh\n')
        else:  # `pass` keeps an `if cuda >= X:` body that held only this pair valid
            out.append(f"{ind}pass  # build_mamba_ssm.sh: architecture dropped\n")
        n_arch += 1
        i += 2
        continue
    out.append(lines[i])
    i += 1
src = "".join(out)
if n_arch == 0 or len(re.findall(r"arch=compute_", src)) != 1:
    sys.exit(f"patch_setup: unexpected cc_flag layout in {path} ({n_arch} pairs); update the script")
# our pair must sit directly in the CUDA branch (same indentation as its check_if_cuda_home_none call),
# not under an `if cuda-version` that may be false (then nvcc would get no architecture at all)
ours = next(l for l in src.splitlines() if "# build_mamba_ssm.sh" in l and "gencode" in l)
home = next((l for l in src.splitlines() if l.strip().startswith("check_if_cuda_home_none(")), None)
indent = lambda l: len(l) - len(l.lstrip())
if home is None or indent(ours) != indent(home):
    sys.exit(f"patch_setup: the first -gencode pair in {path} is conditional; update the script or the sdist")
compile(src, path, "exec")  # the patched file must still be valid Python
open(path, "w").write(src)
print(f"patch_setup: replaced {n_arch} -gencode pairs by sm_{sm} only")
EOF
}

build_one() {  # $1: sdist glob
    local sdist
    sdist=$(ls $SDIST_DIR/$1 2>/dev/null | sort | tail -1 || true)
    [[ -n "$sdist" ]] || { echo "build_mamba_ssm: no sdist $SDIST_DIR/$1" >&2; return 1; }
    local name; name=$(basename "$sdist" .tar.gz)
    tar xzf "$sdist" -C "$WORK"
    patch_setup "$WORK/$name/setup.py"
    local t0=$SECONDS
    (cd "$WORK/$name" && "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR" . )
    echo "build_mamba_ssm: built $name in $((SECONDS - t0)) s"
}

T0=$SECONDS
build_one 'mamba_ssm-*.tar.gz'
if [[ "${WITH_CAUSAL_CONV1D:-0}" == 1 ]]; then
    build_one 'causal_conv1d-*.tar.gz'
fi
ls -la "$WHEEL_DIR"/*.whl
if [[ "${INSTALL:-0}" == 1 ]]; then
    "$PY" -m pip install --no-deps --no-index "$WHEEL_DIR"/mamba_ssm-*.whl
    [[ "${WITH_CAUSAL_CONV1D:-0}" == 1 ]] && "$PY" -m pip install --no-deps --no-index "$WHEEL_DIR"/causal_conv1d-*.whl
fi
echo "build_mamba_ssm: total $((SECONDS - T0)) s"

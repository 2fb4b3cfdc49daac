"""Compile every tile config of the fused deep-S4 kernels (synthetic/s4/fused_kernels.py) for an H100 (sm_90)
without a GPU, and print per config: registers, spill stack bytes, shared memory, and whether the dots became
Hopper wgmma or mma.sync. A check of the configs before a device call (ptxas spills, shared memory over 227 KB,
compile errors), not a timing; the device's Triton version may compile differently.

    python scripts/check_fused_sm90.py            (needs triton with its NVIDIA backend; no CUDA device)
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from synthetic.s4 import fused, fused_kernels as fk  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
PTRS = {"fwd": ("K_ptr", "x_ptr", "s_ptr"), "dx": ("K_ptr", "ds_ptr", "x_ptr", "dx_ptr"),
        "dK": ("ds_ptr", "x_ptr", "P_ptr", "scr_ptr")}
INTS = {"fwd": ("N", "B", "D", "sxr"), "dx": ("N", "B", "D", "sxr"), "dK": ("N", "B", "D", "sxr", "BC")}
FNS = {"fwd": fk.conv_fwd, "dx": fk.conv_bwd_dx, "dK": fk.conv_bwd_dK}


def compile_one(name: str, consts: dict, warps: int, stages: int) -> str:
    sig = {p: "*fp32" for p in PTRS[name]} | {i: "i32" for i in INTS[name]} | {c: "constexpr" for c in consts}
    k = triton.compile(ASTSource(fn=FNS[name], signature=sig, constexprs=consts), target=TARGET,
                       options={"num_warps": warps, "num_stages": stages})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        usage = subprocess.run([str(CUOBJDUMP), "-res-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    regs, stack = m.groups() if m else ("?", "?")
    ptx = k.asm["ptx"]
    mma = "wgmma" if "wgmma" in ptx else ("mma.sync" if "mma.sync" in ptx else "no MMA")
    return f"regs {regs:>3}  spill stack {stack:>5} B  shared {k.metadata.shared // 1024:>3} KB  {mma}"


def main() -> int:
    bad = 0
    for relu in (False, True):
        for bt, bj, bb, w, st, bm in fused.CONFIGS:
            for name in ("fwd", "dx") if relu else ("fwd",):  # layer 0's dx is never needed (x has no gradient)
                consts = dict(RELU_IN=relu, DOT_PREC="tf32", BT=bt, BJ=bj, BB=bb, BATCH_M=bm)
                try:
                    line = compile_one(name, consts, w, st)
                except Exception as e:  # a config that fails to compile is reported, the others still run
                    bad, line = bad + 1, f"FAILED {type(e).__name__}: {str(e)[:200]}"
                print(f"{name:3s} relu={relu!s:5s} {(bt, bj, bb, w, st, bm)!s:30s} {line}", flush=True)
        for bt, bb, w, st in fused.DK_CONFIGS:
            try:
                line = compile_one("dK", dict(RELU_IN=relu, DOT_PREC="tf32", BT=bt, BB=bb), w, st)
            except Exception as e:
                bad, line = bad + 1, f"FAILED {type(e).__name__}: {str(e)[:200]}"
            print(f"dK  relu={relu!s:5s} {(bt, bb, w, st)!s:30s} {line}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

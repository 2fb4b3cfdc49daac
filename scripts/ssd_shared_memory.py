"""Shared memory of mamba-ssm's SSD kernels on sm_90, compiled on a machine without a GPU.

Drives ``mamba_chunk_scan_combined`` forward and backward on CPU tensors with a fake driver that reports an
sm_90 target; no kernel runs. Every autotuner compiles each of its configs (Triton's ``metadata.shared``); the
table marks those over the limit (232448 B: an H100's shared memory per block, opt-in) and the one the GPU tests'
fixture runs (``conftest.smallest_config``).

Usage (Triton of the device's image in its own venv; the mamba-ssm sdist unpacked):
  python -m venv /work/venv-t36 && echo /work/venv/lib/python3.11/site-packages \
      > /work/venv-t36/lib/python3.11/site-packages/zz_main.pth
  /work/venv-t36/bin/pip install --no-deps triton==3.6.0 einops
  tar xzf .whl/mamba_ssm-2.3.2.post1.tar.gz -C /tmp
  PYTHONPATH=. /work/venv-t36/bin/python scripts/ssd_shared_memory.py /tmp/mamba_ssm-2.3.2.post1
Compiling every config of the 12 tuners for both dtypes takes ~3 min on 2 cores (Triton caches the kernels).
"""

import argparse
import contextlib
import importlib
import pkgutil
import sys
import types

import torch

LIMIT = 232448  # bytes: H100 shared_memory_per_block_optin (the "Hardware limit" in Triton's error there)
SHAPES = {  # b, l, h, p, g, n, chunk
    "test": (2, 100, 4, 8, 2, 16, 32),  # tests/test_mamba2_gpu.py::test_chunked_equals_mamba_chunk_scan_combined
    "paper": (64, 256, 8, 16, 1, 16, 64),  # the Mamba-II paper preset
    "hf": (2, 64, 4, 32, 1, 16, 16),  # tests/test_ssm_peft_gpu.py's Mamba2ForCausalLM
}


def setup(src: str):
    """A fake sm_90 driver, CPU stand-ins for the CUDA calls mamba-ssm's wrappers make, and mamba_ssm as a bare
    package (its __init__ imports the CUDA extension)."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class FakeDriver:
        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    driver.set_active(FakeDriver())
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()  # CPU tensors: device.index is None
    torch.cuda.get_device_properties = lambda *a: types.SimpleNamespace(multi_processor_count=132)  # H100 SXM
    pkg = types.ModuleType("mamba_ssm")
    pkg.__path__ = [f"{src}/mamba_ssm"]
    sys.modules["mamba_ssm"] = pkg


def tuners():
    from conftest import autotuner_of

    pkg = importlib.import_module("mamba_ssm.ops.triton")
    found = []
    for info in pkgutil.iter_modules(pkg.__path__):
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except ImportError:
            continue
        for obj in vars(mod).values():
            t = autotuner_of(obj)
            if t is not None and all(t is not f for f in found):
                found.append(t)
    return found


def drive(b, l, h, p, g, n, chunk, dtype):
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    x = torch.randn(b, l, h, p, dtype=dtype, requires_grad=True)
    dt = torch.randn(b, l, h, dtype=dtype, requires_grad=True)
    A = -torch.rand(h, requires_grad=True)
    B = torch.randn(b, l, g, n, dtype=dtype, requires_grad=True)
    C = torch.randn(b, l, g, n, dtype=dtype, requires_grad=True)
    D, dt_bias = torch.randn(h, requires_grad=True), torch.randn(h, requires_grad=True)
    y = mamba_chunk_scan_combined(x, dt, A, B, C, chunk, D=D, dt_bias=dt_bias, dt_softplus=True)
    y.sum().backward()


def short(cfg) -> str:
    return str(cfg).replace(", num_ctas: 1", "").replace(", maxnreg: None", "")


def table(shape):
    from triton.runtime.autotuner import Autotuner

    from conftest import smallest_config

    rows = {}

    def compile_all(self, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("grid", "warmup")}
        named = dict(zip(self.arg_names, args))
        dtypes = "/".join(sorted({str(a.dtype)[6:] for a in named.values() if hasattr(a, "dtype")}))
        chosen = smallest_config(self.configs)
        for i, cfg in enumerate(self.configs):
            shared = self.fn.run(*args, grid=None, warmup=True, **kwargs, **cfg.all_kwargs()).metadata.shared
            rows[(self.base_fn.__name__, dtypes, i)] = (shared, short(cfg) + ("  <- tests" if cfg is chosen else ""))
        self.best_config = self.configs[0]  # read by _state_passing_bwd after its launch

    Autotuner.run = compile_all
    for dtype in (torch.float32, torch.bfloat16):
        rows.clear()
        drive(*shape, dtype)
        print(f"### inputs {dtype}")
        for (name, dtypes, i), (shared, cfg) in sorted(rows.items()):
            print(f"{name:38s} {dtypes:17s} {i:2d} {shared:>7} {'EXCEEDS' if shared > LIMIT else '':7s} {cfg}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", help="the unpacked mamba-ssm sdist (holds mamba_ssm/)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="test", help="input sizes (default: test)")
    a = ap.parse_args(argv)
    setup(a.src)
    import triton

    print(f"triton {triton.__version__}, sm_90, limit {LIMIT} B, shape {a.shape} {SHAPES[a.shape]}")
    table(SHAPES[a.shape])


if __name__ == "__main__":
    main()

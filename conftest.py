"""Hypothesis profiles: ``ci`` (default; derandomized and fast) and ``thorough`` (many examples),
chosen with the environment variable ``HYPOTHESIS_PROFILE`` (e.g. ``HYPOTHESIS_PROFILE=thorough pytest``); and the
``no_tf32`` and ``triton_one_config`` fixtures the GPU test modules use."""

import os

import pytest

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough", max_examples=400, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def no_tf32():
    """CUDA matmuls and convolutions in full fp32 for the test (GPU tests against float64 references), restored
    afterwards; a GPU test module takes it with ``pytest.mark.usefixtures("no_tf32")``."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def autotuner_of(obj):
    """The Triton autotuner inside a kernel object (possibly under ``triton.heuristics`` wrappers), or None."""
    from triton.runtime.autotuner import Autotuner

    for _ in range(4):
        if isinstance(obj, Autotuner):
            return obj
        obj = getattr(obj, "fn", None)
    return None


def smallest_config(configs):
    """The autotuning config with the smallest tiles: least ``num_stages`` x product of its ``BLOCK_SIZE_*`` values
    (the shared memory a tiled kernel asks for grows with both), first of equals. A kernel's first config is often
    its largest: mamba-ssm 2.3.2's ``_chunk_state_fwd_kernel`` (128 x 256 x 64, 3 stages) asks for 295,936 bytes of
    shared memory in float32 where an H100 has 232,448 (Triton's OutOfResources, 2026-12-06), and outside
    autotuning nothing skips a config that does not fit."""
    def size(cfg):
        tiles = 1
        for name, value in cfg.kwargs.items():
            if name.startswith("BLOCK_SIZE") and isinstance(value, int):
                tiles *= value
        return (cfg.num_stages or 1) * tiles

    return min(configs, key=size)


@pytest.fixture(scope="session")
def triton_one_config():
    """mamba-ssm's Triton kernels run with one autotuning config only (the smallest tiles,
    :func:`smallest_config`), for the session, restored after.

    Why: on a fresh machine autotuning compiles and times every config of every kernel per shape, which was most
    of ``tests/test_mamba2_gpu.py``'s 175 s; these tests check values, which do not depend on the tile sizes
    (every config computes the same sums). The sweeps keep full autotuning, which skips configs that do not fit."""
    import importlib
    import pkgutil

    saved = []
    try:
        import mamba_ssm.ops.triton as pkg
    except ImportError:
        pkg = None
    for info in pkgutil.iter_modules(pkg.__path__) if pkg is not None else ():
        try:
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        except ImportError:  # a module needing an optional package (causal-conv1d): its kernels are not used
            continue
        for obj in list(vars(mod).values()):
            tuner = autotuner_of(obj)
            if tuner is not None and len(tuner.configs) > 1 and all(t is not tuner for t, _ in saved):
                saved.append((tuner, tuner.configs))
                tuner.configs = [smallest_config(tuner.configs)]
    yield len(saved)
    for tuner, configs in saved:
        tuner.configs = configs

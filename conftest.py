"""Hypothesis profiles: ``ci`` (default; derandomized and fast) and ``thorough`` (many examples),
chosen with the environment variable ``HYPOTHESIS_PROFILE`` (e.g. ``HYPOTHESIS_PROFILE=thorough pytest``); and the
``no_tf32`` fixture the GPU test modules use."""

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

"""Hypothesis profiles: ``ci`` (default; derandomized and fast) and ``thorough`` (many examples),
chosen with the environment variable ``HYPOTHESIS_PROFILE`` (e.g. ``HYPOTHESIS_PROFILE=thorough pytest``)."""

import os

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

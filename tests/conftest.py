"""Test-wide settings: Triton's interpreter, hypothesis profiles, shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Triton kernels must run in the interpreter on CPU machines; this has to be set before any
# @triton.jit function is defined.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official processor's reference outputs kept with the tests."""
    return GOLDEN


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole suite (2 CPUs, small object store, no dashboard, token
    authentication), stopped at the end with its session folder removed. Jobs run in-process find it
    initialised and reuse it."""
    from jobs.ray_runtime import start_ray, stop_ray

    start_ray(num_cpus=2, object_store_memory=512 * 2**20)  # sets Ray's environment, then imports ray
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    stop_ray()

"""One local Ray cluster for every Ray test of the session (starting one costs seconds)."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of a local Ray cluster started for the tests, shut down at the end.
    Four logical CPUs: two one-thread actors of one engine, and room for the next engine's
    actors while Ray is still releasing the last ones."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():  # pragma: no cover - another fixture's cluster
        yield ray.get_runtime_context().gcs_address
        return
    ray.init(num_cpus=4, num_gpus=0, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()

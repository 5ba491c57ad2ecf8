"""Connecting to Ray: an existing cluster by address, or a private local one; quiet either way.

A pipeline that finds Ray already initialised in its process (a notebook, a test session, a job
submitted to a cluster) reuses that connection and leaves it running; one that started Ray shuts
it down when it is done, so no Ray process outlives the command that needed it.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
import ray.data

from clinic.engines.options import EngineOptions

LOCAL_OBJECT_STORE_BYTES = 1 << 30  # batches are small; the default (30 % of RAM) is not needed
QUIET_LOGGERS = ("ray", "ray.data", "ray.train")

# Bounded retries: Ray Data's defaults retry a failed task or restart an actor forever, which
# turns an input that kills its worker every time into a run that never ends.
TASK_RETRIES = 3
ACTOR_RESTARTS = 3


@dataclass(frozen=True)
class RayConnection:
    """What a pipeline needs to know about the cluster it runs on."""

    started_here: bool
    cpus: float
    gpus: float


@contextmanager
def ray_connection(options: EngineOptions) -> Iterator[RayConnection]:
    """Connect (or reuse the process's connection) for the length of one pipeline run."""
    started = not ray.is_initialized()
    if started:
        _init(options)
    _quiet_data_context()
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    try:
        yield RayConnection(started, resources.get("CPU", 0.0), resources.get("GPU", 0.0))
    finally:
        if started:
            ray.shutdown()


def _init(options: EngineOptions) -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    common: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": False,
        "configure_logging": True,
    }
    if options.address:
        ray.init(address=options.address, **common)
        return
    # "local" never joins a cluster named by RAY_ADDRESS: no address means a private Ray (Ray
    # detects this machine's GPUs itself).
    ray.init(
        address="local",
        num_cpus=options.workers,
        object_store_memory=LOCAL_OBJECT_STORE_BYTES,
        **common,
    )


def _quiet_data_context() -> None:
    """No progress bars and no per-dataset log lines: the CLI draws its own progress."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    context.verbose_stats_logs = False
    # Ray Data configures its logger on import and warns about settings made on purpose (the
    # progress bars above); its failures still reach the caller as exceptions.
    logging.getLogger("ray.data").setLevel(logging.ERROR)


@contextmanager
def remote_args_accepted() -> Iterator[None]:
    """Ray Data takes retry limits only through ``**ray_remote_args``, deprecated in favour of
    named parameters that do not cover retries yet; the warning says nothing a user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated.*")
        yield

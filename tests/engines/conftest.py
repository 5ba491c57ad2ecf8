"""One local Ray with 2 CPUs for the engine tests, shut down after them (other packages, such
as the Ray Train test, start their own).

Pipelines called inside a test find Ray initialised and reuse it (they shut down only a Ray
they started themselves), so the ~10 s start and the workers' imports are paid once.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clinic.engines.options import Engine, EngineOptions

RAY_CPUS = 2


@pytest.fixture(scope="package")
def ray_local() -> Iterator[EngineOptions]:
    """Engine options of the package's local Ray (2 workers); Ray is stopped afterwards."""
    from clinic.engines.ray_runtime import ray_connection

    options = EngineOptions(Engine.RAY, workers=RAY_CPUS)
    with ray_connection(options) as connection:
        assert connection.started_here, "a Ray from outside the test session is running"
        yield options

"""Where batch pipelines run: in this process and its worker processes, or on a Ray cluster.

Only :mod:`clinic.engines.options` is imported here; the Ray stages (``ray_ingest``,
``ray_scoring``, ``ray_index``) import Ray and are imported by the pipelines only when a run asks
for ``--engine ray``, so ``import clinic`` and the light commands never pay for Ray.
"""

from clinic.engines.options import ADDRESS_ENV, Engine, EngineOptions, engine_options

__all__ = ["ADDRESS_ENV", "Engine", "EngineOptions", "engine_options"]

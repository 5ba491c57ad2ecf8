"""Engine options: names checked, the cluster address from the environment, no Ray imported."""

from __future__ import annotations

import subprocess
import sys

import pytest

from clinic.engines.options import ADDRESS_ENV, Engine, EngineOptions, engine_options


def test_the_ray_address_defaults_to_the_environment_only_on_ray() -> None:
    env = {ADDRESS_ENV: "ray://head:10001"}
    assert engine_options("ray", env=env).address == "ray://head:10001"
    assert engine_options("ray", "auto", env=env).address == "auto"
    assert engine_options("local", env=env).address is None
    assert engine_options(Engine.RAY, env={}).address is None


def test_an_unknown_engine_or_no_worker_is_an_error() -> None:
    with pytest.raises(ValueError, match="spark"):
        engine_options("spark")
    with pytest.raises(ValueError, match="workers"):
        EngineOptions(Engine.RAY, workers=0)


def test_choosing_an_engine_does_not_import_ray() -> None:
    code = (
        "import sys; from clinic.engines import engine_options; import clinic.ingest.engine; "
        "engine_options('ray'); print('ray' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"

"""Tiny models and a tiny ingested phantom cohort for the model, training and evaluation tests.

The phantom cohort is synthesised and ingested once per test session (on the test backend, see
tests/conftest.py) and copied per test that writes to it; the tiny config keeps every encoder
small and random-initialised so a full pretrain → finetune → calibrate → evaluate cycle runs
in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy.engine import make_url

from clinic.ingest.discover import iter_items_from_paths
from clinic.ingest.engine import IngestOptions, ingest
from clinic.models.config import (
    ModelConfig,
    load_model_config,
    model_config_from_dict,
    model_config_to_dict,
)
from clinic.settings import Settings
from clinic.store.store import Store
from clinic.synth import synthesize_cohort
from tests.conftest import create_database, make_settings

TINY_COHORT = "tiny"
TINY_PATIENTS = 24
COPIED_DATABASES: list[str] = []  # PostgreSQL copies, dropped after the test that made them


def tiny_config() -> ModelConfig:
    """Every encoder small and random-initialised: a model of ~0.3 M trainable parameters."""
    data = model_config_to_dict(load_model_config("cpu-small"))
    data["embed_dim"] = 16
    data["xray"].update(pretrained=False, image_size=32, projection_hidden=16,
                        freeze_backbone=False, backbone="small-cnn")  # fmt: skip
    data["ecg"].update(sampling_rate_hz=50, window_samples=100, stem_channels=[4, 4, 8],
                       stage_channels=[8, 8], blocks_per_stage=1, projection_hidden=16)  # fmt: skip
    data["record"].update(token_dim=8, layers=1, heads=2, dim_feedforward=16, projection_hidden=16)
    data["report"].update(pretrained=False, max_length=32, projection_hidden=16,
                          random_hidden_size=16, random_layers=1, random_heads=2)  # fmt: skip
    data["fusion"].update(layers=1, heads=2, dim_feedforward=32)
    return model_config_from_dict(data)


def build_tiny_store(root: Path, database_url: str | None = None) -> Settings:
    """Synthesise and ingest ``TINY_PATIENTS`` phantom patients into a store with its home at
    ``root`` (a SQLite file there unless ``database_url`` names another database)."""
    url = database_url or f"sqlite:///{root / 'home' / 'clinic.db'}"
    settings = make_settings(root / "home", url)
    cohort = root / "cohort"
    synthesize_cohort(cohort, patients=TINY_PATIENTS, seed=3, workers=1)
    store = Store.open(settings)
    try:
        items = list(iter_items_from_paths([cohort]))
        ingest(store, items, IngestOptions(workers=1, cohort=TINY_COHORT))
    finally:
        store.close()
    return settings


def copy_store(source: Settings, destination: Path) -> Settings:
    """An independent copy of a store (database and blobs) with its home under ``destination``.

    SQLite: the home folder holds the database file. PostgreSQL: the database is cloned with
    ``CREATE DATABASE … TEMPLATE`` (milliseconds for the tiny cohort) and dropped after the test.
    """
    shutil.copytree(source.home, destination / "home")
    if source.is_sqlite:
        url = f"sqlite:///{destination / 'home' / 'clinic.db'}"
    else:
        parsed = make_url(source.database_url)
        server = parsed.set(database="postgres").render_as_string(hide_password=False)
        url = create_database(server, template=parsed.database)
        COPIED_DATABASES.append(url)
    return make_settings(destination / "home", url)


TINY_MODEL = "tiny"


def train_tiny_model(settings: Settings, name: str = TINY_MODEL) -> None:
    """Pretrain, finetune and calibrate a tiny model on the tiny cohort (a few seconds).

    ``min_auroc=0`` so that findings abstain only where calibration had no data, leaving
    non-abstained findings to explain.
    """
    from clinic.train.runner import QuietReporter, TrainRequest, calibrate, finetune, pretrain

    store = Store.open(settings, migrate=False)
    try:
        request = TrainRequest(
            home=settings.home, model_name=name, cohort=TINY_COHORT, config=tiny_config(),
            epochs=1, batch_size=8, min_auroc=0.0,
        )  # fmt: skip
        reporter = QuietReporter()
        pretrain(store, request, reporter)
        finetune(store, request, reporter)
        calibrate(store, request, reporter)
    finally:
        store.close()

"""Migrations: upgrade to head, no drift from the models, down to base and up again."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from clinic.store.db import alembic_config, make_engine
from clinic.store.models import Base


def test_upgrade_check_downgrade_upgrade(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "head")
    command.check(config)  # raises when the models and the migrations disagree
    engine = make_engine(database_url)
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    command.downgrade(config, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    command.upgrade(config, "head")
    assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    engine.dispose()


def test_constraint_names_follow_the_convention(database_url: str) -> None:
    command.upgrade(alembic_config(database_url), "head")
    engine = make_engine(database_url)
    inspector = inspect(engine)
    unique_names = {u["name"] for u in inspector.get_unique_constraints("source_items")}
    assert "uq_source_items_sha256" in unique_names
    foreign = {f["name"] for f in inspector.get_foreign_keys("encounters")}
    assert foreign == {"fk_encounters_patient_id_patients"}
    engine.dispose()

"""``clinic index build``, and the ``--engine``/``--address`` options every batch command shares.

The options live here, beside the one command that is only a batch job, so that ``clinic
ingest``, ``clinic import …`` and ``clinic cohort score`` spell them the same way. Nothing here
imports Ray or torch at start-up: the engines load inside the commands.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from clinic.cli.output import consoles, print_json
from clinic.engines.options import ADDRESS_ENV, Engine, EngineOptions, engine_options
from clinic.settings import Settings

LoadSettings = Callable[[], Settings]

EngineOption = Annotated[
    Engine,
    typer.Option(
        "--engine",
        case_sensitive=False,
        help="Where the batch runs: local (this machine's processes) or ray (Ray Data).",
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        envvar=ADDRESS_ENV,
        help="Ray cluster to join (ray://HOST:10001, HOST:6379 or auto); default: a local Ray.",
    ),
]
index_app = typer.Typer(help="Retrieval indexes over the embedding spaces.")


def chosen_engine(engine: Engine, address: str | None, workers: int) -> EngineOptions:
    """The CLI's choice as engine options (the address only matters on Ray)."""
    return engine_options(engine, address, max(workers, 1))


def register(app: typer.Typer, load_settings: LoadSettings) -> None:
    """Add ``clinic index build`` to the ``clinic`` app."""
    index_app.command("build")(_build_command(load_settings))
    app.add_typer(index_app, name="index")


def _build_command(load_settings: LoadSettings) -> Callable[..., None]:
    def build_command(
        space: Annotated[
            list[str] | None,
            typer.Option(
                "--space", metavar="SPACE", help="Embedding space MODEL_KEY:MODALITY (repeatable)."
            ),
        ] = None,
        model: Annotated[
            str | None,
            typer.Option(
                "--model", metavar="NAME", help="Every space of this model (default: the newest)."
            ),
        ] = None,
        adapter: Annotated[str | None, typer.Option("--adapter", help="LoRA adapter.")] = None,
        engine: EngineOption = Engine.LOCAL,
        address: AddressOption = None,
        workers: Annotated[int, typer.Option(min=1, help="Ray workers (local Ray).")] = 1,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Build or update the retrieval index of every embedding space of a model.

        SQLite: the embedded index under CLINIC_HOME/index (on Ray: one task per space).
        PostgreSQL: pgvector's HNSW index, built by the database server.
        """
        from clinic.cli.predict_commands import default_model
        from clinic.engines.index import build_indexes, model_spaces, space_dims
        from clinic.store.store import Store

        if space and model:
            raise typer.BadParameter("give --space or --model, not both")
        settings = load_settings()
        store = Store.open(settings)
        try:
            if space:
                spaces = space_dims(store, space)
            else:
                spaces = model_spaces(store, _model_key(settings, default_model(settings, model),
                                                        adapter))  # fmt: skip
            builds = build_indexes(store, spaces, chosen_engine(engine, address, workers))
        except LookupError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
        finally:
            store.close()
        if as_json:
            print_json([build.to_json() for build in builds])
            return
        human = consoles(False)[0]
        if not builds:
            human.print("No embeddings for this model yet: score a cohort first.")
        for build in builds:
            human.print(f"{build.space}  {build.backend:8} {build.vectors:7} vectors  "
                        f"{build.seconds:6.2f} s  ({build.ran_on})")  # fmt: skip

    return build_command


def _model_key(settings: Settings, name: str, adapter: str | None) -> str:
    """The embedding-space key of model ``name`` (with ``adapter``), as its predictions use."""
    from clinic.inference.service import loaded_model

    return loaded_model(settings.home, name, adapter, "cpu").lineage.model_key

"""``clinic``: ingest, inspect, train, evaluate, predict, retrieve, report and audit.

Each command builds :class:`~clinic.settings.Settings` from the environment and opens the store in
``CLINIC_HOME`` (or ``CLINIC_DATABASE_URL``); nothing is configured at import time.
"""

import signal
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from clinic.audit.chain import AuditKey, append_event
from clinic.cli.admin_commands import register as register_admin_commands
from clinic.cli.index_commands import AddressOption, EngineOption, chosen_engine
from clinic.cli.index_commands import register as register_index_commands
from clinic.cli.model_commands import evaluate_command_factory
from clinic.cli.model_commands import register as register_model_commands
from clinic.cli.output import (
    consoles,
    counts_table,
    print_json,
    progress_bar,
    summary_table,
)
from clinic.cli.predict_commands import register as register_predict_commands
from clinic.cli.ui_command import register as register_ui_command
from clinic.engines.options import Engine
from clinic.ingest.discover import iter_items_from_paths, iter_manifest_items
from clinic.ingest.engine import IngestOptions, IngestSummary, ingest
from clinic.ingest.errors import IngestError
from clinic.ingest.importers import IMPORTERS
from clinic.ingest.types import IngestItem
from clinic.ingest.writer import current_actor
from clinic.settings import RunMode, Settings, SettingsError
from clinic.store.queries import cohort_sizes, quarantine_counts, quarantine_entries, table_counts
from clinic.store.store import Store

app = typer.Typer(
    help="clinic: multimodal diagnostics platform (chest X-ray, 12-lead ECG, records, reports).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
import_app = typer.Typer(help="Import a public dataset from its original folder layout.")
quarantine_app = typer.Typer(help="Inspect inputs that were refused, with their reasons.")
cohort_app = typer.Typer(help="Named sets of cases.")
db_app = typer.Typer(help="Database schema management.")
app.add_typer(import_app, name="import")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(cohort_app, name="cohort")
app.add_typer(db_app, name="db")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
WorkersOption = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Decoding processes (default: 1).")
]
CohortOption = Annotated[
    str | None, typer.Option("--cohort", help="Add every ingested case to this named cohort.")
]


def load_settings(mode: RunMode | None = None) -> Settings:
    """Settings from the environment; exits with a clear message when they are unsafe.

    Every command that opens the store checks the pseudonymisation key, not only those that
    ingest: a store is only ever opened under the key its pseudonyms were made with.
    """
    try:
        settings = Settings.from_env(mode=mode)
        settings.check()
    except (SettingsError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    return settings


def run_ingest(
    settings: Settings, items: list[IngestItem], options: IngestOptions, as_json: bool
) -> IngestSummary:
    """Run the engine with a progress bar; print the summary table or the JSON object."""
    human, errors = consoles(as_json)
    store = Store.open(settings)
    try:
        with progress_bar(errors, "ingesting") as progress, _stop_on_sigterm():
            summary = ingest(store, items, options, progress)
    except KeyboardInterrupt:
        typer.echo("interrupted: committed batches are kept; run it again to finish", err=True)
        raise typer.Exit(130) from None
    finally:
        store.close()
    if as_json:
        print_json(summary.as_json())
    else:
        human.print(summary_table(summary))
    return summary


class _Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C so the run is recorded as interrupted and workers stop."""


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise _Terminated


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _collect(make_items: Callable[[], Iterable[IngestItem]]) -> list[IngestItem]:
    """Materialise items; a path, manifest or layout that cannot be read stops with its reason.

    Importers check their layout when called and discovery when iterated: both are inside here.
    """
    try:
        return list(make_items())
    except IngestError as error:
        typer.echo(f"error: {error.reason.value}: {error.message}", err=True)
        raise typer.Exit(2) from error


@app.command("ingest")
def ingest_command(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders to ingest.")],
    manifest: Annotated[
        Path | None,
        typer.Option(help="CSV linking files to patients: patient_id,encounter_id,kind,path."),
    ] = None,
    cohort: CohortOption = None,
    workers: WorkersOption = 1,
    retry_quarantined: Annotated[
        bool, typer.Option(help="Decode again inputs quarantined by an earlier run.")
    ] = False,
    batch_size: Annotated[
        int, typer.Option(min=1, help="Items committed per transaction (default 64).")
    ] = 64,
    engine: EngineOption = Engine.LOCAL,
    address: AddressOption = None,
    as_json: JsonOption = False,
) -> None:
    """Ingest X-rays (DICOM/PNG/JPEG), ECGs (WFDB/DICOM), records (CSV/Parquet) and reports.

    Folders are walked; a folder holding manifest.csv is read through it. Re-running is safe:
    inputs already stored are counted, never duplicated.
    """
    settings = load_settings()
    items = _collect(lambda: iter_items_from_paths(list(paths)))
    if manifest is not None:
        items += _collect(lambda: iter_manifest_items(manifest))
    options = IngestOptions(
        workers=workers,
        cohort=cohort,
        sources=tuple(str(p) for p in paths),
        retry_quarantined=retry_quarantined,
        batch_size=batch_size,
        **_engine_fields(engine, address, workers),
    )
    run_ingest(settings, items, options, as_json)


def _engine_fields(engine: Engine, address: str | None, workers: int) -> dict[str, Any]:
    chosen = chosen_engine(engine, address, workers)
    return {"engine": chosen.engine, "address": chosen.address}


def _register_importer(name: str) -> None:
    def command(
        root: Annotated[Path, typer.Argument(help=f"The {name} dataset folder (or file).")],
        cohort: CohortOption = None,
        workers: WorkersOption = 1,
        engine: EngineOption = Engine.LOCAL,
        address: AddressOption = None,
        as_json: JsonOption = False,
    ) -> None:
        settings = load_settings()
        items = _collect(lambda: IMPORTERS[name](root))
        options = IngestOptions(
            workers=workers, cohort=cohort, command=f"import {name}", sources=(str(root),),
            **_engine_fields(engine, address, workers),
        )  # fmt: skip
        run_ingest(settings, items, options, as_json)

    command.__doc__ = f"Import {name} from its original layout (any subset of it)."
    import_app.command(name)(command)


for _importer_name in IMPORTERS:
    _register_importer(_importer_name)

register_model_commands(app, load_settings)
app.command("evaluate")(evaluate_command_factory(load_settings))
register_predict_commands(app, cohort_app, load_settings)
register_admin_commands(app, load_settings)
register_index_commands(app, load_settings)
register_ui_command(app, load_settings)


@app.command("status")
def status_command(as_json: JsonOption = False) -> None:
    """Counts of patients, images, ECGs, records, reports, labels and quarantined inputs."""
    print_status(load_settings(), as_json)


def print_status(settings: Settings, as_json: bool) -> None:
    store = Store.open(settings)
    with store.session() as session:
        counts, quarantined = table_counts(session), quarantine_counts(session)
    store.close()
    if as_json:
        print_json({"counts": counts, "quarantined": quarantined})
        return
    human, _ = consoles(False)
    human.print(counts_table(f"Store {settings.home}", counts))
    if quarantined:
        human.print(counts_table("Quarantined by reason", quarantined))
    else:
        human.print("Nothing quarantined.")


@quarantine_app.command("list")
def quarantine_list_command(
    reason: Annotated[str | None, typer.Option(help="Only this reason code.")] = None,
    as_json: JsonOption = False,
) -> None:
    """List refused inputs: path, sha256, reason code and message."""
    settings = load_settings()
    store = Store.open(settings)
    with store.session() as session:
        entries = quarantine_entries(session, reason)
        append_event(
            session, AuditKey.from_settings(settings), actor=current_actor(), role="system",
            action="quarantine.read", resource_type="quarantine", resource_id=reason,
            details={"entries": len(entries)},
        )  # fmt: skip
        session.commit()
    store.close()
    if as_json:
        print_json([entry.as_json() for entry in entries])
        return
    for entry in entries:
        typer.echo(f"{entry.reason:32} {entry.path}\n{'':32} {entry.message}")


@cohort_app.command("list")
def cohort_list_command(as_json: JsonOption = False) -> None:
    """Cohorts and their number of cases."""
    store = Store.open(load_settings())
    with store.session() as session:
        sizes = cohort_sizes(session)
    store.close()
    if as_json:
        print_json(sizes)
    else:
        consoles(False)[0].print(counts_table("Cohorts", sizes))


@db_app.command("upgrade")
def db_upgrade_command() -> None:
    """Create or migrate the store's schema to the latest version."""
    settings = load_settings()
    Store.open(settings).close()
    typer.echo(f"schema at head: {settings.database_url.split('@')[-1]}")


@app.command("synth")
def synth_command(
    out: Annotated[Path, typer.Option(help="Folder to write the phantom cohort into.")],
    patients: Annotated[int, typer.Option(min=1, help="Number of patients.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same files).")] = 0,
) -> None:
    """Write a phantom cohort in real formats (DICOM, WFDB, CSV, text) with ground truth."""
    from clinic.synth import synthesize_cohort

    summary = synthesize_cohort(out, patients=patients, seed=seed)
    human, _ = consoles(False)
    human.print(counts_table(f"Phantom cohort in {out}", dict(summary.counts)))
    human.print(f"manifest: {summary.manifest}\nground truth: {summary.labels}")


@app.command("demo")
def demo_command(
    patients: Annotated[int, typer.Option(min=1, help="Phantom patients to generate.")] = 120,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    workers: WorkersOption = 2,
    ui: Annotated[
        bool, typer.Option(help="End by starting the review UI (Ctrl-C stops it).")
    ] = True,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port of the review UI.")] = 8501,
) -> None:
    """The demo: synthesise and ingest a phantom cohort, train a model, score the cohort, write
    its report, predict and retrieve for the top case, verify the audit trail, start the UI."""
    from clinic.synth import synthesize_cohort

    settings = load_settings(RunMode.DEMO)
    cohort_dir = settings.home / "demo-cohort"
    if not (cohort_dir / "manifest.csv").is_file():
        typer.echo(f"synthesising {patients} phantom patients into {cohort_dir} …")
        synthesize_cohort(cohort_dir, patients=patients, seed=seed)
    items = _collect(lambda: iter_items_from_paths([cohort_dir]))
    options = IngestOptions(
        workers=workers, cohort="demo", command="demo", sources=(str(cohort_dir),)
    )
    run_ingest(settings, items, options, as_json=False)
    print_status(settings, as_json=False)
    run_demo_model(settings)
    if ui:
        from clinic.cli.ui_command import exec_command, streamlit_command

        typer.echo(
            f"\nStarting the review UI: open http://127.0.0.1:{port} and sign in as "
            "demo-clinician / demo-clinician-password (Ctrl-C stops it; `clinic ui` starts it "
            "again, `clinic ui --demo-login` prints the logins)."
        )
        exec_command(streamlit_command("127.0.0.1", port))


def run_demo_model(settings: Settings) -> None:
    """Train (or reuse) the demo model, then score, report, predict, retrieve and verify."""
    from clinic.cli.model_commands import reporter_for
    from clinic.demo import DEMO_USERS, run_demo_analysis, train_demo_model

    store = Store.open(settings)
    try:
        with reporter_for(False) as reporter:
            train_demo_model(store, reporter)
            result = run_demo_analysis(store, _DemoProgress(reporter))
    finally:
        store.close()
    human = consoles(False)[0]
    human.print(f"\nScored {result.scored} new cases; cohort report: {result.report}")
    top = result.prediction
    human.print(f"Top-risk case {result.top_case} ({top['subset']}):")
    for finding in sorted(top["findings"], key=lambda f: -f["probability"])[:3]:
        low, high = finding["interval"]
        human.print(f"  {finding['label']:24} {finding['probability']:.2f} ({low:.2f}–{high:.2f})")
    human.print("Most similar cases:")
    for hit in result.similar["hits"]:
        labels = ", ".join(hit["labels"]) or "no positive label"
        human.print(f"  {hit['case_id']}  similarity {hit['score']:.2f}  ({labels})")
    audit = result.audit
    human.print(f"Audit trail: {'intact' if audit['ok'] else 'BROKEN'}, {audit['events']} events")
    logins = ", ".join(f"{name} / {password}" for name, (_, password) in DEMO_USERS.items())
    typer.echo(
        f"\nThe demo store is {settings.home}. Demo logins: {logins}. Try:\n"
        f"  CLINIC_MODE=demo .venv/bin/clinic predict {result.top_case} --json\n"
        f"  CLINIC_MODE=demo .venv/bin/clinic similar {result.top_case} --k 5 --filter age=40-90\n"
        '  CLINIC_MODE=demo .venv/bin/clinic similar --text "pleural effusion" --k 5\n'
        "  CLINIC_MODE=demo .venv/bin/clinic audit verify --json\n"
        f"  open {result.report}"
    )


class _DemoProgress:
    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def start(self, total: int) -> None:
        self.reporter.start("scoring the demo cohort", total)

    def advance(self, amount: int) -> None:
        self.reporter.advance(amount)

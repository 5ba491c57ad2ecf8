"""``clinic predict``, ``clinic similar``, ``clinic cohort score|report``, ``clinic export fhir``.

Each command resolves who acts (``CLINIC_USER``/``CLINIC_PASSWORD``, or the local operator in
demo/test mode), then calls the service layer, which checks permissions and writes the audit
trail. torch loads only inside the commands.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from clinic.cli.index_commands import AddressOption, EngineOption, chosen_engine
from clinic.cli.model_commands import JsonOption, reporter_for
from clinic.cli.output import consoles, print_json
from clinic.engines.options import Engine
from clinic.settings import Settings
from clinic.store.store import Store

LoadSettings = Callable[[], Settings]
export_app = typer.Typer(help="Export predictions in exchange formats (FHIR R4).")

ModelOption = Annotated[
    str | None, typer.Option("--model", help="Model name (default: the newest calibrated one).")
]
AdapterOption = Annotated[str | None, typer.Option("--adapter", help="LoRA adapter name.")]


@contextmanager
def acting(load_settings: LoadSettings) -> Iterator[tuple[Store, Any]]:
    """The opened store and the principal acting; service errors become clear exits."""
    from clinic.audit.chain import AuditKey
    from clinic.auth.session import resolve_principal

    settings = load_settings()
    store = Store.open(settings)
    try:
        with _clear_errors():
            with store.session() as session:
                try:
                    principal = resolve_principal(
                        settings, session, AuditKey.from_settings(settings)
                    )
                finally:
                    session.commit()  # a failed sign-in's audit event is kept
            yield store, principal
    finally:
        store.close()


@contextmanager
def _clear_errors() -> Iterator[None]:
    from clinic.auth.roles import AccessDenied
    from clinic.auth.users import AuthenticationError

    try:
        yield
    except (AccessDenied, AuthenticationError) as error:
        typer.echo(f"denied: {error}", err=True)
        raise typer.Exit(3) from error
    except (LookupError, ValueError, RuntimeError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error


def default_model(settings: Settings, name: str | None) -> str:
    """``name``, or the most recently calibrated model under CLINIC_HOME/models."""
    if name:
        return name
    candidates = sorted(
        (settings.home / "models").glob("*/calibration.json"),
        key=lambda path: path.stat().st_mtime,
    )
    if not candidates:
        typer.echo("error: no calibrated model in this store; train one (see README)", err=True)
        raise typer.Exit(2)
    return candidates[-1].parent.name


def register(app: typer.Typer, cohort_app: typer.Typer, load_settings: LoadSettings) -> None:
    """Add the prediction, retrieval, cohort and export commands to the ``clinic`` app."""
    app.command("predict")(_predict_command(load_settings))
    app.command("similar")(_similar_command(load_settings))
    cohort_app.command("score")(_cohort_score_command(load_settings))
    cohort_app.command("report")(_cohort_report_command(load_settings))
    export_app.command("fhir")(_export_fhir_command(load_settings))
    app.add_typer(export_app, name="export")


def _predict_command(load_settings: LoadSettings) -> Callable[..., None]:
    def predict_command(
        case_id: Annotated[str, typer.Argument(help="The case (encounter) pseudonymous id.")],
        model: ModelOption = None,
        adapter: AdapterOption = None,
        explain: Annotated[
            bool, typer.Option(help="Store saliency / attribution artifacts.")
        ] = True,
        as_json: JsonOption = False,
    ) -> None:
        """Calibrated findings for one case, with uncertainty, contributions and lineage."""
        from clinic.inference.service import PredictRequest, predict

        with acting(load_settings) as (store, principal):
            name = default_model(store.settings, model)
            request = PredictRequest(case_id, name, adapter, explain)
            result = predict(store, principal, request)
        if as_json:
            print_json(result)
        else:
            _print_prediction(result)

    return predict_command


def _print_prediction(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(
        title=f"case {result['case_id']} · {result['model']['name']} · {result['subset']}"
    )
    for column in ("finding", "probability", "90% interval", "status", "contributions"):
        table.add_column(column)
    for finding in result["findings"]:
        low, high = finding["interval"]
        status = "abstained" if finding["abstained"] else ""
        parts = ", ".join(f"{m} {v:+.2f}" for m, v in finding["contributions"].items())
        table.add_row(finding["label"], f"{finding['probability']:.3f}",
                      f"{low:.2f}–{high:.2f}", status, parts)  # fmt: skip
    human = consoles(False)[0]
    human.print(table)
    human.print(f"lineage {result['lineage_hash']} (code {result['lineage']['code_version']})")
    for finding in result["findings"]:
        if finding["abstained"]:
            human.print(f"  {finding['label']}: {finding['abstain_reason']}")


def _similar_command(load_settings: LoadSettings) -> Callable[..., None]:
    def similar_command(
        case_id: Annotated[str | None, typer.Argument(help="Query case id.")] = None,
        text: Annotated[str | None, typer.Option("--text", help="Free-text query.")] = None,
        k: Annotated[int, typer.Option("--k", min=1, max=1000, help="Hits to return.")] = 10,
        modalities: Annotated[
            str | None, typer.Option(help="Query modalities to use, e.g. xray,ecg.")
        ] = None,
        to: Annotated[
            str, typer.Option("--to", help="cases (default), or report/xray/ecg/record.")
        ] = "cases",
        filter_text: Annotated[
            str | None,
            typer.Option("--filter", help="e.g. label=MI,age=60-80,sex=female,cohort=demo,has=ecg"),
        ] = None,
        same_patient: Annotated[
            bool, typer.Option(help="Also return the query patient's other cases.")
        ] = False,
        model: ModelOption = None,
        adapter: AdapterOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Similar cases: patient → patients, cross-modal (X-ray → reports), or text → cases."""
        from clinic.retrieval.filters import parse_filter
        from clinic.retrieval.search import SimilarRequest, similar

        with acting(load_settings) as (store, principal):
            request = SimilarRequest(
                model=default_model(store.settings, model), case_id=case_id, text=text, k=k,
                modalities=tuple(m for m in (modalities or "").split(",") if m),
                target=to, case_filter=parse_filter(filter_text),
                include_same_patient=same_patient, adapter=adapter,
            )  # fmt: skip
            result = similar(store, principal, request)
        if as_json:
            print_json(result)
            return
        from rich.markup import escape

        human = consoles(False)[0]
        human.print(f"query {result['query']!r} → {result['target']} ({len(result['hits'])} hits)")
        for hit in result["hits"]:
            parts = ", ".join(f"{m} {v:.2f}" for m, v in hit["by_modality"].items())
            labels = ",".join(hit["labels"]) or "-"
            human.print(
                escape(f"  {hit['case_id']}  {hit['score']:.3f}  [{parts}]  labels: {labels}")
            )

    return similar_command


def _cohort_score_command(load_settings: LoadSettings) -> Callable[..., None]:
    def cohort_score_command(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        model: ModelOption = None,
        adapter: AdapterOption = None,
        workers: Annotated[
            int,
            typer.Option(
                min=0,
                help="Decoding processes (local); decode tasks and model actors (ray, at least 1).",
            ),
        ] = 0,
        batch_size: Annotated[int, typer.Option(min=1, help="Cases per batch.")] = 32,
        engine: EngineOption = Engine.LOCAL,
        address: AddressOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Score every case of a cohort (resumable: re-running skips cases already scored)."""
        from clinic.inference.cohort import CohortScoreRequest, score_cohort

        chosen = chosen_engine(engine, address, workers)
        with acting(load_settings) as (store, principal), reporter_for(as_json) as reporter:
            request = CohortScoreRequest(
                name, default_model(store.settings, model), adapter, workers, batch_size,
                engine=chosen.engine, address=chosen.address,
            )  # fmt: skip
            summary = score_cohort(store, principal, request, _BarProgress(reporter))
        if as_json:
            print_json(summary.to_json())
        else:
            consoles(False)[0].print(
                f"cohort {name}: {summary.scored} scored, {summary.already_scored} already "
                f"scored, {summary.no_usable_input} without usable input (run {summary.run_id})"
            )

    return cohort_score_command


class _BarProgress:
    def __init__(self, reporter: Any) -> None:
        self.reporter = reporter

    def start(self, total: int) -> None:
        self.reporter.start("scoring", total)

    def advance(self, amount: int) -> None:
        self.reporter.advance(amount)


def _cohort_report_command(load_settings: LoadSettings) -> Callable[..., None]:
    def cohort_report_command(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        out: Annotated[Path, typer.Option("--out", help="Folder for report.html and tables.")],
        model: Annotated[
            str | None, typer.Option("--model", help="Model (default: latest scored run).")
        ] = None,
        as_json: JsonOption = False,
    ) -> None:
        """An HTML report (ROC/PR, reliability, subsets, subgroups) + CSV/Parquet predictions."""
        from clinic.reports.cohort import CohortReportRequest, cohort_report

        with acting(load_settings) as (store, principal):
            files = cohort_report(store, principal, CohortReportRequest(name, out, model))
        paths = {key: str(value) for key, value in vars(files).items()}
        if as_json:
            print_json(paths)
        else:
            consoles(False)[0].print(f"report: {files.html}\npredictions: {files.csv}")

    return cohort_report_command


def _export_fhir_command(load_settings: LoadSettings) -> Callable[..., None]:
    def export_fhir_command(
        case_id: Annotated[str, typer.Argument(help="The case whose latest prediction to export.")],
        out: Annotated[Path | None, typer.Option("--out", help="File (default: stdout).")] = None,
    ) -> None:
        """FHIR R4 Bundle: DiagnosticReport + one Observation per finding + the model Device."""
        from clinic.reports.export import export_fhir

        with acting(load_settings) as (store, principal):
            bundle = export_fhir(store, principal, case_id)
        text = json.dumps(bundle, indent=2)
        if out is None:
            print(text)
        else:
            out.write_text(text + "\n")

    return export_fhir_command

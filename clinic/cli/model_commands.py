"""``clinic train …``, ``clinic evaluate`` and ``clinic run <benchmark>``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clinic.cli.output import consoles, print_json
from clinic.data.cases import CohortNotFoundError
from clinic.data.splits import SplitPlan
from clinic.settings import Settings
from clinic.store.store import Store
from clinic.train.errors import ModelNotFoundError

if TYPE_CHECKING:  # torch and the model stack load only when a model command runs
    from clinic.train.runner import Reporter, TrainRequest

train_app = typer.Typer(help="Train a model on a cohort: pretrain, finetune, calibrate.")
run_app = typer.Typer(help="Benchmarks that anyone can run from a fresh clone.")

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ModelOption = Annotated[str, typer.Option("--model", help="Model name (folder under models/).")]
CohortOption = Annotated[
    str | None, typer.Option("--cohort", help="Cohort to train on (default: every case).")
]
ConfigOption = Annotated[
    str,
    typer.Option("--config", help="Named model config (cpu-small, gpu-base) or a JSON file."),
]
EpochsOption = Annotated[int, typer.Option("--epochs", min=1, help="Training epochs.")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=2, help="Cases per step.")]
LrOption = Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOption = Annotated[
    str | None, typer.Option("--device", help="cpu, cuda or cuda:N (default: best available).")
]
VocabularyOption = Annotated[
    str | None, typer.Option("--labels-from", help="Only labels of this vocabulary.")
]
LabelsOption = Annotated[
    str | None, typer.Option("--labels", help="Comma-separated label names to predict.")
]
TestFoldsOption = Annotated[
    str, typer.Option("--test-folds", help="Stored fold numbers used as the test split.")
]
ValFoldsOption = Annotated[
    str, typer.Option("--val-folds", help="Stored fold numbers used as the validation split.")
]


class Launcher(StrEnum):
    torchrun = "torchrun"
    ray = "ray"


LauncherOption = Annotated[
    Launcher | None,
    typer.Option(
        "--launcher",
        help="Data-parallel pretrain/finetune: torchrun (local processes) or ray (Ray Train). "
        "Default: one process, or one rank of an enclosing torchrun.",
    ),
]
WorkersOption = Annotated[
    int, typer.Option("--workers", min=1, help="Processes for --launcher (one per GPU).")
]


class RichReporter:
    """Progress bars and notes on a console (stderr when the command prints JSON)."""

    def __init__(self, progress: Progress, console: Console) -> None:
        self.progress, self.console = progress, console
        self.task: Any = None

    def start(self, description: str, total: int) -> None:
        if self.task is not None:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self.task is not None:
            self.progress.advance(self.task, amount)

    def note(self, message: str) -> None:
        self.progress.console.print(message)


@contextmanager
def reporter_for(as_json: bool) -> Iterator[RichReporter]:
    console = consoles(as_json)[0]
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        yield RichReporter(progress, console)


def _folds(text: str) -> frozenset[int]:
    try:
        return frozenset(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise typer.BadParameter(f"folds must be comma-separated integers, got {text!r}") from error


def _run_stage(
    stage: Callable[[Store, TrainRequest, Reporter], dict[str, Any]],
    request: TrainRequest,
    settings: Settings,
    as_json: bool,
) -> None:
    """Run a stage here; under torchrun this process is one rank and only rank 0 draws progress,
    migrates the store and prints the card."""
    from clinic.train.distributed import is_rank_zero
    from clinic.train.runner import QuietReporter

    lead = is_rank_zero()
    store = Store.open(settings, migrate=lead)
    try:
        if lead:
            with reporter_for(as_json) as reporter:
                card = stage(store, request, reporter)
        else:
            card = stage(store, request, QuietReporter())
    except (CohortNotFoundError, ModelNotFoundError, ValueError, KeyError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    finally:
        store.close()
    if lead:
        _print_card(card, request, as_json)


def _print_card(card: Mapping[str, Any], request: TrainRequest, as_json: bool) -> None:
    if as_json:
        print_json(dict(card))
    else:
        consoles(False)[0].print(f"model {request.model_name}: {card['directory']}")


def _config_values(config: str) -> dict[str, Any]:
    """``--config``: a packaged name as it is, or a JSON file read into the request's config."""
    if not config.endswith(".json"):
        return {"config_name": config}
    from clinic.models.config import model_config_from_dict

    path = Path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"config_name": str(path), "config": model_config_from_dict(data)}
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise typer.BadParameter(f"cannot read model config {config}: {error}") from error


def _rank_arguments(name: str, options: Mapping[str, object]) -> list[str]:
    """The command line each torchrun rank runs: this stage with the same options (launcher
    options left out: the ranks find torchrun's environment instead)."""
    arguments = ["train", name]
    for flag, value in options.items():
        if value is None or value is False:
            continue
        arguments += [flag] if value is True else [flag, str(value)]
    return arguments


def _run_distributed(
    name: str,
    launcher: Launcher | None,
    workers: int,
    request: TrainRequest,
    rank_arguments: list[str],
    as_json: bool,
) -> bool:
    """Launch or refuse a data-parallel run; False when the stage should run here as usual."""
    from clinic.train import distributed

    if launcher is not None and name not in distributed.DISTRIBUTED_STAGES:
        typer.echo(f"error: --launcher applies to {' and '.join(distributed.DISTRIBUTED_STAGES)}",
                   err=True)  # fmt: skip
        raise typer.Exit(2)
    if name not in distributed.DISTRIBUTED_STAGES and distributed.torchrun_environment():
        typer.echo(f"error: {name} runs in one process; run it without torchrun", err=True)
        raise typer.Exit(2)
    if launcher is Launcher.torchrun and not distributed.torchrun_environment():
        raise typer.Exit(distributed.launch_torchrun(workers, rank_arguments))
    if launcher is Launcher.ray:
        import torch

        use_gpu = (request.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
        try:
            card = distributed.run_on_ray(name, request, workers=workers, use_gpu=use_gpu)
        except (ModelNotFoundError, ValueError, OSError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
        except RuntimeError as error:  # a worker failed; Ray's message carries its traceback
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
        _print_card(card, request, as_json)
        return True
    return False


def register(app: typer.Typer, load_settings: Callable[[], Settings]) -> None:
    """Attach the model commands to the ``clinic`` app."""
    app.add_typer(train_app, name="train")
    app.add_typer(run_app, name="run")

    def make_request(
        model: str, cohort: str | None, **values: Any
    ) -> tuple[Settings, TrainRequest]:
        from clinic.train.runner import TrainRequest

        settings = load_settings()
        labels = values.pop("labels")
        plan = SplitPlan(test_folds=_folds(values.pop("test_folds")),
                         val_folds=_folds(values.pop("val_folds")))  # fmt: skip
        names = tuple(n.strip() for n in labels.split(",") if n.strip()) if labels else ()
        request = TrainRequest(home=settings.home, model_name=model, cohort=cohort,
                               label_names=names, split_plan=plan, **values)  # fmt: skip
        return settings, request

    for name, doc in (
        ("pretrain", "Contrastive pre-training of the encoders (every modality pair)."),
        ("finetune", "Supervised training: fusion + head, modality dropout."),
        ("calibrate", "Fit per-subset calibration on the validation split."),
    ):
        _register_stage(name, doc, make_request)


def _register_stage(
    name: str,
    doc: str,
    make_request: Callable[..., tuple[Settings, TrainRequest]],
) -> None:
    def command(
        model: ModelOption,
        cohort: CohortOption = None,
        config: ConfigOption = "cpu-small",
        epochs: EpochsOption = 5,
        batch_size: BatchOption = 32,
        lr: LrOption = 1e-3,
        seed: SeedOption = 0,
        device: DeviceOption = None,
        labels_from: VocabularyOption = None,
        labels: LabelsOption = None,
        test_folds: TestFoldsOption = "10",
        val_folds: ValFoldsOption = "9",
        adapter: Annotated[
            str | None,
            typer.Option(help="finetune only: train LoRA adapters + head under this name."),
        ] = None,
        launcher: LauncherOption = None,
        workers: WorkersOption = 2,
        as_json: JsonOption = False,
    ) -> None:
        if adapter and name != "finetune":
            typer.echo("error: --adapter applies to finetune only", err=True)
            raise typer.Exit(2)
        settings, request = make_request(
            model, cohort, **_config_values(config), epochs=epochs, batch_size=batch_size, lr=lr,
            seed=seed, device=device, label_vocabulary=labels_from, labels=labels,
            test_folds=test_folds, val_folds=val_folds, adapter=adapter,
        )  # fmt: skip
        rank_arguments = _rank_arguments(name, {
            "--model": model, "--cohort": cohort, "--config": config, "--epochs": epochs,
            "--batch-size": batch_size, "--lr": lr, "--seed": seed, "--device": device,
            "--labels-from": labels_from, "--labels": labels, "--test-folds": test_folds,
            "--val-folds": val_folds, "--adapter": adapter, "--json": as_json,
        })  # fmt: skip
        if _run_distributed(name, launcher, workers, request, rank_arguments, as_json):
            return
        from clinic.train import distributed, runner

        with distributed.process_group(request.device):
            _run_stage(getattr(runner, name), request, settings, as_json)

    command.__doc__ = doc
    train_app.command(name)(command)


def evaluate_command_factory(load_settings: Callable[[], Settings]) -> Callable[..., None]:
    """``clinic evaluate``: the model on every modality subset beside in-run baselines."""

    def evaluate_command(
        model: ModelOption,
        cohort: CohortOption = None,
        out: Annotated[Path | None, typer.Option(help="Folder for JSON, Markdown, PNG.")] = None,
        resamples: Annotated[int, typer.Option(min=10, help="Bootstrap resamples.")] = 1000,
        device: DeviceOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Per-subset AUROC / AUPRC / ECE with bootstrap CIs, baselines, zero-shot, retrieval."""
        from clinic.evaluation.evaluate import EvaluationRequest, evaluate
        from clinic.evaluation.subsets import EvaluationSettings

        settings = load_settings()
        folder = out or settings.home / "evaluations" / model
        request = EvaluationRequest(settings.home, model, cohort, folder,
                                    EvaluationSettings(n_resamples=resamples), device)  # fmt: skip
        store = Store.open(settings)
        try:
            result = evaluate(store, request)
        except (CohortNotFoundError, ModelNotFoundError, ValueError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
        finally:
            store.close()
        if as_json:
            print_json(result)
        else:
            consoles(False)[0].print((folder / "evaluation.md").read_text())

    return evaluate_command


@run_app.command("phantom-benchmark")
def phantom_benchmark_command(
    patients: Annotated[int, typer.Option(min=50, help="Phantom patients.")] = 3000,
    seed: SeedOption = 0,
    workers: Annotated[int, typer.Option(min=1, help="Processes for synthesis/ingest.")] = 2,
    home: Annotated[Path | None, typer.Option(help="Keep the store here (default: temp).")] = None,
    pretrain_epochs: Annotated[int, typer.Option(min=1)] = 4,
    finetune_epochs: Annotated[int, typer.Option(min=1)] = 8,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Full evaluation on a fresh phantom cohort, with the oracle ceiling from latent evidence."""
    from clinic.benchmarks.phantom import PhantomOptions, run_phantom_benchmark

    options = PhantomOptions(patients=patients, seed=seed, workers=workers, home=home,
                             pretrain_epochs=pretrain_epochs, finetune_epochs=finetune_epochs,
                             device=device)  # fmt: skip
    with reporter_for(as_json) as reporter:
        result = run_phantom_benchmark(options, reporter)
    print_json(result) if as_json else consoles(False)[0].print_json(data=result)


@run_app.command("ptbxl-benchmark")
def ptbxl_benchmark_command(
    train: Annotated[Path, typer.Option(help="PTB-XL-layout folder to train on.")],
    test: Annotated[Path, typer.Option(help="PTB-XL-layout folder to test on.")],
    seeds: Annotated[int, typer.Option(min=1, help="Seeds for the neural models.")] = 3,
    test_folds: Annotated[
        str, typer.Option(help="When train and test are one folder: its test folds, e.g. 7,8.")
    ] = "",
    workers: Annotated[int, typer.Option(min=1, help="Processes for the import.")] = 2,
    home: Annotated[Path | None, typer.Option(help="Keep the store here (default: temp).")] = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Our ECG pathway vs a supervised 1-D ResNet and features + gradient boosting."""
    from clinic.benchmarks.ptbxl import PtbxlOptions, run_ptbxl_benchmark

    for folder in (train, test):
        if not (folder / "ptbxl_database.csv").is_file():
            typer.echo(f"error: {folder} is not a PTB-XL folder (no ptbxl_database.csv)", err=True)
            raise typer.Exit(2)
    options = PtbxlOptions(train_dir=train, test_dir=test, seeds=seeds, workers=workers,
                           test_folds=_folds(test_folds), home=home, device=device)  # fmt: skip
    try:
        with reporter_for(as_json) as reporter:
            result = run_ptbxl_benchmark(options, reporter)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    print_json(result) if as_json else consoles(False)[0].print_json(data=result)


@run_app.command("iu-benchmark")
def iu_benchmark_command(
    reports: Annotated[Path, typer.Option(help="IU folder with indiana_reports.csv.")] = Path(
        "../shared/data/iu-reports"
    ),
    seeds: Annotated[int, typer.Option(min=1, help="Seeds for every method.")] = 1,
    max_train: Annotated[int, typer.Option(min=10, help="Training reports used (CPU cost).")] = 600,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs of LoRA and full fine-tuning.")] = 2,
    workers: Annotated[int, typer.Option(min=1, help="Processes for the import.")] = 2,
    home: Annotated[Path | None, typer.Option(help="Keep the store here (default: temp).")] = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Report problems from report text: frozen MiniLM vs LoRA adapters vs full fine-tuning."""
    from clinic.benchmarks.iu import IuOptions, run_iu_benchmark

    if not any((reports / f"indiana_reports.{ext}").is_file() for ext in ("csv", "csv.gz")):
        typer.echo(f"error: {reports} is not an IU folder (no indiana_reports.csv)", err=True)
        raise typer.Exit(2)
    options = IuOptions(reports_dir=reports, seeds=seeds, max_train=max_train, epochs=epochs,
                        workers=workers, home=home, device=device)  # fmt: skip
    try:
        with reporter_for(as_json) as reporter:
            result = run_iu_benchmark(options, reporter)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    print_json(result) if as_json else consoles(False)[0].print_json(data=result)


@run_app.command("hannover-benchmark")
def hannover_benchmark_command(
    data: Annotated[Path, typer.Option(help="Hannover folder with data.csv and png/.")] = Path(
        "../shared/data/hannover-cxr"
    ),
    folds: Annotated[int, typer.Option(min=2, help="Patient-grouped cross-validation folds.")] = 5,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds (encoder init, fusion heads).")] = 1,
    workers: Annotated[int, typer.Option(min=1, help="Processes for the import.")] = 2,
    home: Annotated[Path | None, typer.Option(help="Keep the store here (default: temp).")] = None,
    device: DeviceOption = None,
    as_json: JsonOption = False,
) -> None:
    """ICU admission from the chest X-ray, the labs, and both, by cross-validation."""
    from clinic.benchmarks.hannover import HannoverOptions, run_hannover_benchmark

    if not (data / "data.csv").is_file() or not (data / "png").is_dir():
        typer.echo(f"error: {data} is not a Hannover folder (no data.csv and png/)", err=True)
        raise typer.Exit(2)
    options = HannoverOptions(data_dir=data, folds=folds, seeds=seeds, workers=workers,
                              home=home, device=device)  # fmt: skip
    try:
        with reporter_for(as_json) as reporter:
            result = run_hannover_benchmark(options, reporter)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    print_json(result) if as_json else consoles(False)[0].print_json(data=result)

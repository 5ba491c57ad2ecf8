"""Data-parallel training: two gloo ranks train the model that one process trains.

The module fixture runs the same jobs (pretrain + finetune; a pretrain stopped after its first
epoch with its checkpoint left behind, then resumed) once in this process and once on two spawned
ranks, and compares the weights. Two things are held fixed so that equality can hold:

* Dropout, modality dropout and the ECG measurements (whose encoder has a fixed dropout) are
  off: masks are drawn per tensor, so a split batch cannot reproduce them. Augmentation stays on.
* The runner's AdamW is swapped for SGD with momentum in both runs. AdamW divides each gradient
  element by its running RMS, so elements whose true gradient is 0 (the key bias of attention,
  which softmax ignores) move by ±lr on rounding noise alone: one process and two ranks then
  differ by ~1e-3 for reasons that have nothing to do with distribution. SGD keeps weight
  differences proportional to gradient differences, and a wrong gradient scale (which AdamW's
  normalisation would hide) still shows.

Batches of 5 cases split 3 + 2. The tiny cohort never leaves a rank without a modality that
another rank has, so :func:`step_gradients` builds that case on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from sqlalchemy import func, select
from torch import Tensor, nn
from torch.multiprocessing.spawn import spawn

import clinic.train.runner as runner
from clinic.data.dataset import make_collate
from clinic.data.splits import SplitPlan
from clinic.models.config import ModelConfig, model_config_from_dict, model_config_to_dict
from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel
from clinic.settings import Settings
from clinic.store.models import AuditEvent
from clinic.store.store import Store
from clinic.train.artifacts import CARD_FILE, WEIGHTS_FILE, model_dir, read_json
from clinic.train.data import fit_preprocess, load_cohort, make_dataset
from clinic.train.device import seed_everything
from clinic.train.distributed import (
    GlooSyncBatchNorm,
    rank_slice,
    replicate,
    run_on_ray,
    run_stage,
    share_collate,
    torchrun_command,
    torchrun_environment,
    world,
)
from clinic.train.loops import finetune_epoch, pretrain_epoch
from clinic.train.runner import TrainRequest
from tests.conftest import cli_env
from tests.modelkit import TINY_COHORT, copy_store, tiny_config

WORKERS = 2
RELATIVE_TOLERANCE = 1e-5
ABSOLUTE_FLOOR = 1e-6  # an all-zero tensor compares absolutely
SGD_LR = 0.05


def deterministic_config() -> ModelConfig:
    """The tiny config with every dropout off (see the module docstring)."""
    data = model_config_to_dict(tiny_config())
    data["ecg"]["dropout"] = 0.0
    data["record"]["dropout"] = 0.0
    data["fusion"].update(dropout=0.0, modality_dropout=0.0)
    return model_config_from_dict(data)


def request_for(home: Path, name: str, **changes: Any) -> TrainRequest:
    values: dict[str, Any] = {"home": home, "model_name": name, "cohort": TINY_COHORT,
                              "config": deterministic_config(), "epochs": 2, "batch_size": 5,
                              "measure_ecg": False}  # fmt: skip
    return TrainRequest(**{**values, **changes})


def plain_sgd(
    parameters: list[nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """Stands in for the runner's AdamW (see the module docstring)."""
    return torch.optim.SGD(parameters, lr=SGD_LR, momentum=0.9, weight_decay=weight_decay)


def use_sgd_everywhere() -> None:
    """Ray's worker setup hook: the same swap in every Ray worker process."""
    torch.optim.AdamW = plain_sgd  # type: ignore[misc, assignment]


# --- jobs, run in one process or on every rank ----------------------------------------------


@dataclass(frozen=True)
class Job:
    """One stage run; ``keep_checkpoint`` leaves the last checkpoint behind as a killed run
    would (the model is written too, which the resumed run simply overwrites)."""

    stage: str
    request: TrainRequest
    keep_checkpoint: bool = False


def jobs_for(home: Path, prefix: str) -> list[Job]:
    full, resumed = f"{prefix}-full", f"{prefix}-resumed"
    return [
        Job("pretrain", request_for(home, full)),
        Job("finetune", request_for(home, full)),
        Job("pretrain", request_for(home, resumed, epochs=1), keep_checkpoint=True),
        Job("pretrain", request_for(home, resumed)),
    ]


WATCHED = ("save_checkpoint", "clear_checkpoint", "save_model", "write_json", "audit_training",
           "pretrain_epoch", "finetune_epoch")  # fmt: skip


def run_jobs(settings: Settings, jobs: Sequence[Job], log: Path) -> None:
    """Run ``jobs`` as this rank (SGD for AdamW), logging every call of ``WATCHED``."""
    with pytest.MonkeyPatch.context() as patch:
        for name in WATCHED:
            patch.setattr(runner, name, _logged(log, name, getattr(runner, name)))
        patch.setattr(torch.optim, "AdamW", plain_sgd)
        for job in jobs:
            with log.open("a") as out:
                out.write(f"job {job.request.model_name} {job.stage}\n")
            with pytest.MonkeyPatch.context() as inner:
                if job.keep_checkpoint:
                    inner.setattr(runner, "clear_checkpoint", lambda directory: None)
                run_stage(job.stage, settings, job.request)


def _logged(log: Path, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        with log.open("a") as out:
            out.write(f"{name}\n")
        return function(*args, **kwargs)

    return call


# --- targeted checks: synchronised BatchNorm, ranks without a modality ------------------------

BATCH_NORM_SPLITS = {"uneven": (4, 2), "empty": (6, 0)}


def batch_norm_results(rank: int, counts: tuple[int, ...]) -> dict[str, Tensor]:
    """This rank's rows of a fixed (6, 3, 5) batch through GlooSyncBatchNorm (plain BatchNorm
    in one process): output, gradients (parameters' summed over ranks) and running statistics."""
    generator = torch.Generator().manual_seed(5)
    inputs, weights = torch.randn(2, 6, 3, 5, generator=generator)
    rows = slice(sum(counts[:rank]), sum(counts[: rank + 1]))
    norm = GlooSyncBatchNorm(3) if world()[1] > 1 else nn.BatchNorm1d(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = inputs[rows].clone().requires_grad_(True)
    y = norm(x)
    (y * weights[rows]).sum().backward()
    grads = [norm.weight.grad, norm.bias.grad]
    assert grads[0] is not None and grads[1] is not None and x.grad is not None
    if world()[1] > 1:
        for grad in grads:
            dist.all_reduce(grad)
    assert norm.running_mean is not None and norm.running_var is not None
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": grads[0], "bias_grad": grads[1],
            "running_mean": norm.running_mean, "running_var": norm.running_var}  # fmt: skip


STEP_ROWS = 6


def step_gradients(settings: Settings) -> dict[str, dict[str, Tensor]]:
    """Gradients of one pretrain step and one finetune step on a fixed global batch, seen from
    this rank (after DDP's average). Rank 1's share (rows 3-5) has no X-ray (its encoder, with
    synchronised BatchNorm, must still run on zero rows) and no report (its embedding must still
    take part in the loss's gather); rank 0 has fewer known labels than rank 1."""
    seed_everything(0)
    store = Store.open(settings, migrate=False)
    try:
        data = load_cohort(store, TINY_COHORT, plan=SplitPlan())
        config = deterministic_config()
        model = ClinicModel(config, fit_preprocess(config, data.splits["train"]), data.label_names)
        dataset = make_dataset(data.splits["train"], store, model, train=False)
        batch = make_collate(dataset.preprocess)([dataset[i] for i in range(STEP_ROWS)])
    finally:
        store.close()
    batch["present_xray"][3:] = False
    batch["present_report"][3:] = False
    batch["labels"][:3, 1:] = float("nan")
    rank, size = world()
    share = rank_slice(STEP_ROWS, rank, size)
    local = {key: value[share] for key, value in batch.items()}
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    device = torch.device("cpu")
    results: dict[str, dict[str, Tensor]] = {}
    with replicate(model, device, seed=0) as replica:
        pretrain_epoch(model, [local], optimiser, device, MultiModalContrastiveLoss(),
                       replica=replica)  # fmt: skip
        results["pretrain"] = _gradients(model)
        finetune_epoch(model, [local], optimiser, device, drop_probability=0.0,
                       reconstruction_weight=0.5, replica=replica)  # fmt: skip
        results["finetune"] = _gradients(model)
    return results


def _gradients(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- the two-rank run --------------------------------------------------------------------------


def free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _rank_main(
    rank: int, size: int, address: str, settings: Settings, jobs: list[Job], out: str
) -> None:
    """A spawned rank: join the gloo group, run the checks and the jobs, leave the group."""
    torch.set_num_threads(1)  # two ranks share the machine's cores
    dist.init_process_group(
        "gloo", init_method=address, rank=rank, world_size=size, timeout=timedelta(seconds=120)
    )
    try:
        folder = Path(out)
        norms = {
            name: batch_norm_results(rank, counts) for name, counts in BATCH_NORM_SPLITS.items()
        }
        torch.save(norms, folder / f"batch-norm-{rank}.pt")
        torch.save(step_gradients(settings), folder / f"step-{rank}.pt")
        run_jobs(settings, jobs, folder / f"rank{rank}.log")
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class Trained:
    settings: Settings
    out: Path
    seconds: float  # wall time of the two-rank run, process start included


@pytest.fixture(scope="module")
def trained(tiny_phantom: Settings, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    settings = copy_store(tiny_phantom, tmp_path_factory.mktemp("distributed"))
    out = tmp_path_factory.mktemp("ranks")
    run_jobs(settings, jobs_for(settings.home, "single"), out / "single.log")
    started = time.perf_counter()
    spawn(  # type: ignore[no-untyped-call]
        _rank_main,
        args=(WORKERS, free_address(), settings, jobs_for(settings.home, "ddp"), str(out)),
        nprocs=WORKERS,
        join=True,  # a failing rank raises here, and the other is terminated
    )
    return Trained(settings, out, time.perf_counter() - started)


def weights(home: Path, name: str) -> dict[str, Tensor]:
    return load_file(str(model_dir(home, name) / WEIGHTS_FILE))


def max_relative_difference(got: dict[str, Tensor], expected: dict[str, Tensor]) -> float:
    """Over every floating-point tensor: max |got − expected| / max |expected| (each tensor's own
    scale, so entries that happen to sit near zero do not dominate). Integer tensors (BatchNorm's
    batch counters) must be equal."""
    assert got.keys() == expected.keys()
    worst = 0.0
    for name, reference in expected.items():
        if not reference.is_floating_point():
            assert torch.equal(got[name], reference), name
            continue
        difference = float((got[name].double() - reference.double()).abs().max())
        worst = max(worst, difference / max(float(reference.abs().max()), ABSOLUTE_FLOOR))
    return worst


def job_calls(trained: Trained, log: str) -> list[tuple[str, list[str]]]:
    """A log cut into (job header, calls made during that job)."""
    jobs: list[tuple[str, list[str]]] = []
    for line in (trained.out / f"{log}.log").read_text().splitlines():
        if line.startswith("job "):
            jobs.append((line, []))
        else:
            jobs[-1][1].append(line)
    return jobs


# --- fast checks -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_rank_slices_split_a_batch_contiguously_and_evenly(size: int) -> None:
    for rows in range(size, 13):
        shares = [range(rows)[rank_slice(rows, rank, size)] for rank in range(size)]
        assert [i for share in shares for i in share] == list(range(rows))
        lengths = [len(share) for share in shares]
        assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_one_process_keeps_whole_batches() -> None:
    def collate(items: Sequence[int]) -> list[int]:
        return list(items)

    assert world() == (0, 1)
    assert share_collate(collate) is collate


def test_torchrun_is_recognised_from_its_environment() -> None:
    assert torchrun_environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert not torchrun_environment({"RANK": "0", "WORLD_SIZE": "1"})  # one rank: no group
    assert not torchrun_environment({"WORLD_SIZE": "2"})
    assert not torchrun_environment({})


def test_the_launcher_reruns_the_cli_under_torchrun() -> None:
    command = torchrun_command(3, ["train", "pretrain", "--model", "m"])
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=3" in command
    assert command[-6:] == ["-m", "clinic.cli", "train", "pretrain", "--model", "m"]


def test_gloo_batch_norm_is_plain_batch_norm_in_one_process() -> None:
    torch.manual_seed(0)
    plain, synced = nn.BatchNorm2d(4), GlooSyncBatchNorm(4)
    synced.load_state_dict(plain.state_dict())
    x = torch.randn(3, 4, 5, 5)
    for mode in (True, False):
        plain.train(mode), synced.train(mode)
        torch.testing.assert_close(synced(x), plain(x), rtol=0, atol=0)
    torch.testing.assert_close(synced.state_dict(), plain.state_dict(), rtol=0, atol=0)


# --- two ranks ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("split", sorted(BATCH_NORM_SPLITS))
def test_synchronised_batch_norm_equals_batch_norm_over_the_global_batch(
    trained: Trained, split: str
) -> None:
    expected = batch_norm_results(0, (6,))
    ranks = [torch.load(trained.out / f"batch-norm-{r}.pt")[split] for r in range(WORKERS)]
    for key in ("y", "x_grad"):
        torch.testing.assert_close(torch.cat([r[key] for r in ranks]), expected[key], msg=key)
    for rank in ranks:
        for key in ("weight_grad", "bias_grad", "running_mean", "running_var"):
            torch.testing.assert_close(rank[key], expected[key], msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_a_rank_without_a_modality_still_gives_the_single_process_gradients(
    trained: Trained, stage: str
) -> None:
    expected = step_gradients(trained.settings)[stage]
    assert {"encoders.xray.backbone.blocks.0.conv.weight",
            "encoders.report.projection.out.weight"} <= set(expected)  # fmt: skip
    for rank in range(WORKERS):
        got = torch.load(trained.out / f"step-{rank}.pt")[stage]
        assert got.keys() == expected.keys()
        assert max_relative_difference(got, expected) < RELATIVE_TOLERANCE


@pytest.mark.slow
def test_two_ranks_train_the_weights_of_one_process(trained: Trained) -> None:
    home = trained.settings.home
    single, ddp = weights(home, "single-full"), weights(home, "ddp-full")
    assert not all(torch.equal(single[k], ddp[k]) for k in single)  # computed, not copied
    difference = max_relative_difference(ddp, single)
    print(f"\nmax relative weight difference (pretrain + finetune): {difference:.2e}; "
          f"two-rank run {trained.seconds:.1f} s")  # fmt: skip
    assert difference < RELATIVE_TOLERANCE
    single_card = read_json(model_dir(home, "single-full") / CARD_FILE)
    ddp_card = read_json(model_dir(home, "ddp-full") / CARD_FILE)
    for stage in ("pretrain", "finetune"):
        got, expected = ddp_card["training"][stage], single_card["training"][stage]
        assert [entry["epoch"] for entry in got] == [1, 2]
        for entry, reference in zip(got, expected, strict=True):
            assert entry == pytest.approx(reference, rel=1e-5)


@pytest.mark.slow
def test_only_rank_zero_writes_and_audits(trained: Trained) -> None:
    calls = {
        log: [c for _, job in job_calls(trained, log) for c in job] for log in ("rank0", "rank1")
    }
    writes = {"save_checkpoint", "clear_checkpoint", "save_model", "write_json", "audit_training"}
    assert not writes & set(calls["rank1"])
    assert calls["rank0"].count("save_checkpoint") == 2 + 2 + 1 + 1  # one per epoch run
    assert calls["rank0"].count("save_model") == calls["rank0"].count("audit_training") == 4
    assert calls["rank0"].count("pretrain_epoch") == calls["rank1"].count("pretrain_epoch") == 4
    store = Store.open(trained.settings, migrate=False)
    try:
        with store.session() as session:
            audited = session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.resource_id == "ddp-full")
            )
    finally:
        store.close()
    assert audited == 2  # model.pretrain and model.finetune, once each


@pytest.mark.slow
def test_a_distributed_run_resumes_from_its_checkpoint(trained: Trained) -> None:
    for log in ("rank0", "rank1"):
        jobs = job_calls(trained, log)
        assert [header for header, _ in jobs[2:]] == ["job ddp-resumed pretrain"] * 2
        assert jobs[2][1].count("pretrain_epoch") == 1
        assert jobs[3][1].count("pretrain_epoch") == 1  # epoch 2 only: epoch 1 was checkpointed
    home = trained.settings.home
    card = read_json(model_dir(home, "ddp-resumed") / CARD_FILE)
    assert [entry["epoch"] for entry in card["training"]["pretrain"]] == [1, 2]
    assert not (model_dir(home, "ddp-resumed") / "checkpoint" / "state.json").exists()
    difference = max_relative_difference(
        weights(home, "ddp-resumed"), weights(home, "single-resumed")
    )
    print(f"\nmax relative weight difference (resumed pretrain): {difference:.2e}")
    assert difference < RELATIVE_TOLERANCE


# --- launchers ---------------------------------------------------------------------------------


def run_in_own_group(
    command: list[str], env: dict[str, str], timeout: float
) -> tuple[int, str, str]:
    """Run ``command`` in a new process group; on timeout the whole group (torchrun and its
    ranks) is killed, so nothing outlives the test."""
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return process.returncode, stdout, stderr


@pytest.mark.slow
def test_the_cli_trains_on_two_torchrun_ranks(tiny_phantom: Settings, tmp_path: Path) -> None:
    settings = copy_store(tiny_phantom, tmp_path)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(model_config_to_dict(deterministic_config())))
    command = [sys.executable, "-m", "clinic.cli", "train", "pretrain", "--model", "cli",
               "--cohort", TINY_COHORT, "--config", str(config), "--epochs", "1", "--json",
               "--batch-size", "5", "--launcher", "torchrun", "--workers", "2"]  # fmt: skip
    env = cli_env(settings) | {"OMP_NUM_THREADS": "1"}
    code, stdout, stderr = run_in_own_group(command, env, timeout=300)
    assert code == 0, stderr
    card = json.loads(stdout)  # one JSON object: rank 0 alone prints
    assert card["name"] == "cli" and card["config_name"] == str(config)
    assert [entry["epoch"] for entry in card["training"]["pretrain"]] == [1]
    assert (
        card["hashes"]["weights"]
        == read_json(model_dir(settings.home, "cli") / CARD_FILE)["hashes"]["weights"]
    )
    assert not (model_dir(settings.home, "cli") / "checkpoint" / "state.json").exists()


@pytest.mark.slow
def test_ray_train_with_two_workers_trains_the_weights_of_one_process(
    tiny_phantom: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    settings = copy_store(tiny_phantom, tmp_path)
    for key, value in cli_env(settings).items():
        if key.startswith("CLINIC_"):
            monkeypatch.setenv(key, value)  # Ray's workers read their settings from here
    paths = [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))  # for the hook
    reference = request_for(settings.home, "single", epochs=1)
    run_jobs(settings, [Job("pretrain", reference)], tmp_path / "single.log")
    if ray.is_initialized():  # a Ray left by other tests lacks this test's setup hook
        ray.shutdown()
    ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": use_sgd_everywhere})  # fmt: skip
    try:
        started = time.perf_counter()
        card = run_on_ray(
            "pretrain", replace(reference, model_name="ray"), workers=WORKERS, use_gpu=False
        )
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    difference = max_relative_difference(
        weights(settings.home, "ray"), weights(settings.home, "single")
    )
    print(f"\nRay Train, 2 workers: max relative weight difference {difference:.2e}; "
          f"fit {seconds:.1f} s")  # fmt: skip
    assert difference < RELATIVE_TOLERANCE
    single = read_json(model_dir(settings.home, "single") / CARD_FILE)["training"]["pretrain"]
    assert card["training"]["pretrain"] == [pytest.approx(e, rel=1e-5) for e in single]

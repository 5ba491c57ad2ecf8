"""Data-parallel training over several processes: torchrun or Ray Train, DDP, exact global batches.

The rule everything here serves: N ranks over a global batch make the same update as one process
over that batch, so a model trained on 2 CPUs or 8 GPUs is the model a single process would have
trained (up to float rounding). What that takes:

* **Batches.** Every rank walks the single-process order (same seeded shuffle, same batches) and
  keeps its contiguous share of each global batch (:func:`rank_slice`). The share is cut *after*
  the dataset has produced the whole batch: augmentation draws from one random stream per dataset,
  so a rank that fetched only its own cases would augment them differently than one process does.
  The cost is that every rank augments the whole batch (cheap next to the encoders, which is what
  the ranks split).
* **Losses.** The contrastive loss already gathers embeddings across ranks with gradient and
  scales each rank's share by the world size (see clinic.models.loss); the supervised loss is
  scaled here the same way (:class:`DistributedReplica`), so DDP's gradient *mean* equals the
  single-process gradient of the global batch.
* **BatchNorm.** Training statistics must span the global batch: BatchNorm layers become
  ``torch.nn.SyncBatchNorm`` on CUDA and :class:`GlooSyncBatchNorm` elsewhere (torch's runs on
  GPUs only). Collectives need every rank, so an encoder with such layers also runs on ranks
  whose share has none of its modality (zero rows) while another rank has some.
* **Randomness.** Dropout and modality dropout draw masks per tensor, so a split batch cannot
  reproduce one process's masks; ranks are seeded apart (seed, rank) and the runs agree in
  distribution only. Equality is exact (to rounding) with dropout off, which the tests use.
* **Files.** Rank 0 alone writes checkpoints, the model and its card; the others wait at a
  barrier, and every rank reads the same checkpoint to resume.

Launchers: ``torchrun`` (the CLI re-runs itself under ``torch.distributed.run``, or joins the
group of an enclosing torchrun from ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) and
Ray Train's ``TorchTrainer``, which sets up the group itself; both run :func:`run_stage` per rank.
Ray is imported only when used.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from clinic.models.model import ClinicModel, ModelOutput
from clinic.train.device import pick_device
from clinic.train.loops import Batch, LocalReplica, Replica
from clinic.train.losses import masked_bce

if TYPE_CHECKING:
    from clinic.settings import Settings
    from clinic.train.runner import Reporter, TrainRequest

T = TypeVar("T")
DISTRIBUTED_STAGES = ("pretrain", "finetune")
DEFAULT_TIMEOUT = dt.timedelta(minutes=30)


# --- the process group -------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_rank_zero() -> bool:
    """True in the process that writes files and reports progress (also in a single process)."""
    return world()[0] == 0


def barrier() -> None:
    """Wait for every rank; nothing to wait for in a single process."""
    if world()[1] > 1:
        dist.barrier()


def torchrun_environment(env: Mapping[str, str] | None = None) -> bool:
    """True when torchrun (or an equivalent launcher) started this process as one of several."""
    env = os.environ if env is None else env
    return "RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1


def worker_device(requested: str | None = None) -> torch.device:
    """This rank's device: ``requested`` as given, except that under torchrun a bare "cuda" (or
    no request on a GPU machine) means the GPU of this rank's ``LOCAL_RANK``, one per process."""
    device = pick_device(requested)
    if device.type == "cuda" and device.index is None and torchrun_environment():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def backend_for(device: torch.device) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(
    requested_device: str | None = None, timeout: dt.timedelta = DEFAULT_TIMEOUT
) -> Iterator[None]:
    """Join the group torchrun describes in the environment for the duration of the block.

    A no-op outside torchrun (one process) and when a group already exists (Ray Train made it);
    the group is destroyed on the way out only when this block created it.
    """
    if (dist.is_available() and dist.is_initialized()) or not torchrun_environment():
        yield
        return
    device = worker_device(requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device), init_method="env://", timeout=timeout)
    try:
        yield
    finally:
        dist.destroy_process_group()


# --- global batches ----------------------------------------------------------------------------


def rank_slice(rows: int, rank: int, size: int) -> slice:
    """This rank's contiguous share of ``rows``: sizes differ by at most one, lower ranks first
    (the layout of ``torch.tensor_split``), so concatenating the shares in rank order gives back
    the global batch."""
    base, extra = divmod(rows, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def share_collate(collate: Callable[[Sequence[Any]], T]) -> Callable[[Sequence[Any]], T]:
    """A collate function that keeps this rank's share of each global batch; ``collate`` itself
    in a single process. Used with the single-process sampler, it gives every rank its slice of
    the same global batches, in the same order, that one process would see."""
    rank, size = world()
    if size == 1:
        return collate

    def take_share(items: Sequence[Any]) -> T:
        if len(items) < size:
            raise ValueError(
                f"a batch of {len(items)} cases cannot be shared by {size} processes: use a "
                f"batch size (and a training split) of at least {size} cases"
            )
        return collate(items[rank_slice(len(items), rank, size)])

    return take_share


# --- BatchNorm over the global batch -----------------------------------------------------------


def _all_reduce_with_grad(tensor: Tensor) -> Tensor:
    """Sum over ranks; the backward sums the gradients of every rank's loss (works on gloo)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*all_reduce is deprecated", category=FutureWarning
        )
        reduced: Tensor = dist_nn.all_reduce(tensor)  # type: ignore[no-untyped-call]
    return reduced


class GlooSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics (and their gradients) span every rank's rows.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; this one reduces sums with an autograd-aware
    all-reduce, so it runs on gloo. Statistics are accumulated in float64, so the result matches
    a single process over the global batch to float32 rounding.
    Evaluation, and training outside a process group, are plain BatchNorm.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or world()[1] == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.double()
        local_count = x.new_full((1,), float(input.numel() // max(input.shape[1], 1)))
        sums = _all_reduce_with_grad(torch.cat([x.sum(dims), local_count]))  # (C + 1,)
        count = sums[-1].detach()
        if int(count.item()) < 2:
            raise ValueError("BatchNorm needs more than one value per channel in training")
        mean = sums[:-1] / count  # (C,)
        variance = _all_reduce_with_grad((x - mean.view(shape)).pow(2).sum(dims)) / count
        self._update_running_stats(mean.detach(), variance.detach(), count)
        scale = torch.rsqrt(variance + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.double()
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.double()
        return (x * scale.view(shape) + shift.view(shape)).to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, variance: Tensor, count: Tensor) -> None:
        """torch's rule: an exponential (or, with momentum None, cumulative) average of the batch
        mean and the *unbiased* batch variance."""
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            return
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        if self.momentum is None:
            factor = 1.0 / float(self.num_batches_tracked or 1)
        else:
            factor = self.momentum
        unbiased = variance * count / (count - 1)
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


_PLAIN_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SYNCED_BATCH_NORMS = (nn.SyncBatchNorm, GlooSyncBatchNorm)


def _synced_copy(norm: _BatchNorm, device: torch.device) -> _BatchNorm:
    """A synchronised BatchNorm that shares ``norm``'s parameters and running-statistics tensors,
    so whatever it learns is in the original module when that is put back."""
    kind = nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm
    synced = kind(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
    synced.weight, synced.bias = norm.weight, norm.bias
    synced.running_mean, synced.running_var = norm.running_mean, norm.running_var
    synced.num_batches_tracked = norm.num_batches_tracked
    return synced.train(norm.training)


@contextmanager
def synchronised_batch_norm(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Swap every plain BatchNorm of ``model`` for a synchronised one while the block runs.

    Only the exact torch classes are swapped: a subclass may fuse more into its forward. The
    originals are put back afterwards (sharing the same tensors), so the model saves as before.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _PLAIN_BATCH_NORMS:
                assert isinstance(child, _BatchNorm)
                setattr(parent, name, _synced_copy(child, device))
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original.train(getattr(parent, name).training))


def _syncs_statistics(module: nn.Module) -> bool:
    """True when a forward through ``module`` runs BatchNorm collectives (training mode)."""
    return any(isinstance(m, _SYNCED_BATCH_NORMS) and m.training for m in module.modules())


# --- the DDP replica ---------------------------------------------------------------------------


def _global_rows(present: Mapping[str, Tensor]) -> dict[str, int]:
    """Rows having each modality in the global batch (one small all-reduce)."""
    names = list(present)
    counts = torch.stack([present[m].sum() for m in names]).to(torch.long)  # (M,)
    dist.all_reduce(counts)
    return dict(zip(names, counts.tolist(), strict=True))


def embed_for_ranks(model: ClinicModel, batch: Batch) -> dict[str, Tensor]:
    """``model.embed`` made safe for collectives; equal to it wherever this rank has rows.

    When another rank has rows of a modality and this one has none, this rank must still take
    part in that modality's collectives: an encoder with synchronised BatchNorm runs on zero rows,
    and any other absent modality gets a zero embedding that requires grad, so the loss's gather
    of it has a backward here as on the other ranks. Modalities absent from the whole global batch
    are skipped on every rank alike, as in one process.
    """
    present = model.present_masks(batch)
    totals = _global_rows(present)
    out: dict[str, Tensor] = {}
    for modality in model.modalities:
        rows = present[modality]
        full = torch.zeros((rows.shape[0], model.config.embed_dim), device=rows.device)
        has_rows = bool(rows.any())
        if has_rows or (totals[modality] > 0 and _syncs_statistics(model.encoders[modality])):
            # the same call ClinicModel.embed makes; it has no public per-modality hook
            encoded = model._encode(modality, batch, rows)
            full = full.to(encoded.dtype).index_put((rows.nonzero(as_tuple=True)[0],), encoded)
        elif totals[modality] > 0:
            full.requires_grad_(True)
        out[modality] = full
    return out


class TrainingStep(nn.Module):
    """The module DDP wraps: every parameter use of a step happens inside its forward, as DDP's
    search for unused parameters requires (the logit scale included)."""

    def __init__(self, model: ClinicModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        batch: Batch,
        *,
        contrastive: bool,
        drop_probability: float = 0.0,
        hide: tuple[str, ...] = (),
    ) -> tuple[Any, ...]:
        embeddings = embed_for_ranks(self.model, batch)
        if contrastive:
            return embeddings, self.model.logit_scale()
        out = self.model.fuse(embeddings, self.model.present_masks(batch), drop_probability, hide)
        return out.logits, out.fused, out.embeddings, out.present, out.reconstruction_loss


def _one_bucket_mb(model: nn.Module) -> float:
    """A bucket size holding every trainable gradient.

    With one bucket DDP all-reduces once, after the whole backward, never between the
    collectives inside the backward (the loss's gathers, BatchNorm's reductions); several buckets
    could interleave with those differently on different ranks. The price is no overlap of
    communication with the backward.
    """
    size = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return size / 2**20 + 1.0


class DistributedReplica:
    """Forward passes through DDP; losses and figures scaled so that ranks act as one process."""

    def __init__(self, network: DistributedDataParallel, device: torch.device) -> None:
        self.network, self.device = network, device
        self.size = world()[1]

    def embed(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor]:
        embeddings, scale = self.network(batch, contrastive=True)
        return embeddings, scale

    def forward(self, batch: Batch, *, drop_probability: float, hide: Sequence[str]) -> ModelOutput:
        logits, fused, embeddings, present, reconstruction = self.network(
            batch, contrastive=False, drop_probability=drop_probability, hide=tuple(hide)
        )
        return ModelOutput(logits, fused, embeddings, present, reconstruction)

    def supervised_loss(self, logits: Tensor, labels: Tensor, weight: Tensor | None) -> Tensor:
        """This rank's BCE sum over the *global* count of known labels, times the world size:
        DDP's mean of the gradients is then the gradient of the global mean."""
        known = torch.isfinite(labels).sum()
        total = known.clone()
        dist.all_reduce(total)
        local_mean = masked_bce(logits, labels, weight)  # its sum over `known` entries / known
        if int(total.item()) == 0:
            return local_mean  # a graph-connected zero on every rank
        return local_mean * known * self.size / total

    def rows(self, batch: Batch) -> int:
        """Approximate global cases of a step (shares differ by at most one): progress only."""
        return len(batch["labels"]) * self.size

    def mean(self, value: float) -> float:
        reduced = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(reduced)
        return float(reduced.item()) / self.size


@contextmanager
def replicate(model: ClinicModel, device: torch.device, seed: int) -> Iterator[Replica]:
    """The replica a training stage runs its epochs through: local in one process, DDP (with
    synchronised BatchNorm, one gradient bucket, ranks seeded apart) inside a process group.

    Call after the model is on ``device`` and any checkpoint is loaded: DDP starts every rank from
    rank 0's parameters.
    """
    rank, size = world()
    if size == 1:
        yield LocalReplica(model)
        return
    torch.manual_seed(seed * 1_000_003 + rank)  # dropout masks differ between ranks
    with synchronised_batch_norm(model, device):
        network = DistributedDataParallel(
            TrainingStep(model),
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # pretraining leaves the head unused, absent modalities
            forward_sync_buffers=False,  # synchronised BatchNorm keeps running statistics equal
            bucket_cap_mb=_one_bucket_mb(model),
        )
        yield DistributedReplica(network, device)


# --- running a stage on every rank -------------------------------------------------------------


def run_stage(
    stage: str, settings: Settings, request: TrainRequest, reporter: Reporter | None = None
) -> dict[str, Any]:
    """One rank's part of ``clinic train <stage>``: every rank trains, rank 0 reports and writes;
    each returns the model card. The process group must already exist (or there is one rank)."""
    from clinic.store.store import Store
    from clinic.train import runner

    if stage not in DISTRIBUTED_STAGES:
        raise ValueError(f"{stage!r} does not train in parallel; use one of {DISTRIBUTED_STAGES}")
    store = Store.open(settings, migrate=is_rank_zero())  # one rank migrates, if anything
    try:
        chosen = reporter if reporter is not None and is_rank_zero() else runner.QuietReporter()
        card: dict[str, Any] = getattr(runner, stage)(store, request, chosen)
        return card
    finally:
        store.close()


def torchrun_command(workers: int, cli_arguments: Sequence[str]) -> list[str]:
    """``torchrun --standalone --nproc-per-node N -m clinic.cli …`` with this interpreter."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={workers}", "-m", "clinic.cli", *cli_arguments,
    ]  # fmt: skip


def launch_torchrun(workers: int, cli_arguments: Sequence[str]) -> int:
    """Run ``clinic <cli_arguments>`` on ``workers`` local ranks; returns torchrun's exit code.

    Interrupting the launcher terminates torchrun, which stops its workers.
    """
    process = subprocess.Popen(torchrun_command(workers, cli_arguments))
    try:
        return process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def _ray_worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker function: Ray made the process group; settings (and the secrets in
    them) come from each worker's environment, never through Ray's config."""
    import ray.train
    import ray.train.torch

    from clinic.settings import Settings

    request: TrainRequest = config["request"]
    device = str(ray.train.torch.get_device()) if config["use_gpu"] else "cpu"
    request = replace(request, device=device)
    settings = Settings.from_env()
    settings.check()
    stage = config["stage"]
    card = run_stage(stage, settings, request)
    epochs = len(card.get("training", {}).get(stage, []))
    ray.train.report({"stage": stage, "model": request.model_name, "epochs": epochs})


def run_on_ray(
    stage: str,
    request: TrainRequest,
    *,
    workers: int,
    use_gpu: bool,
    storage: Path | None = None,
) -> dict[str, Any]:
    """Train ``stage`` with Ray Train's ``TorchTrainer`` on ``workers`` workers; returns the card.

    Connects to the cluster in ``RAY_ADDRESS`` or starts a local one (and stops it afterwards).
    Workers read ``CLINIC_*`` settings from their environment and must see the same home folder
    (shared storage on a multi-node cluster). Resuming needs nothing from Ray: a restarted run
    continues from the checkpoint rank 0 left in the model folder.
    """
    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from clinic.train.artifacts import CARD_FILE, model_dir, read_json

    if stage not in DISTRIBUTED_STAGES:
        raise ValueError(f"{stage!r} does not train in parallel; use one of {DISTRIBUTED_STAGES}")
    started = not ray.is_initialized()
    if started:
        ray.init(include_dashboard=False, log_to_driver=False)
    try:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"stage": stage, "request": request, "use_gpu": use_gpu},
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
            run_config=RunConfig(
                name=f"{request.model_name}-{stage}-{stamp}",
                storage_path=str((storage or request.home / "ray").resolve()),
            ),
        )
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as error:
            raise RuntimeError(f"the Ray Train run failed: {error}") from error
    finally:
        if started:
            ray.shutdown()
    return read_json(model_dir(request.home, request.model_name) / CARD_FILE)

"""Symmetric InfoNCE (CLIP) over every pair of modalities, for partially paired cases.

A case carries any subset of the four modalities. For each pair ``(a, b)`` only the cases that
have both take part, so sources with ECG+report+record and sources with X-ray+record still train
one shared space: pairs with data pull their two encoders together, absent pairs are masked out.

The design follows open_clip's ``ClipLoss`` (ground truth → logits → loss, local loss against
gathered features, ``all_gather`` with gradient) with one change forced by masking: ranks hold
different numbers of valid rows for a pair, so row counts are gathered first, tensors are padded
to the largest batch and the padding is stripped after the gather. Each rank's loss is scaled so
that (a) the mean of the per-rank losses equals the single-process loss on the concatenated global
batch and (b) DDP's gradient averaging reproduces the single-process gradients exactly.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor, nn
from torch.nn.functional import cross_entropy

from schemas.modalities import MODALITIES

Pair = tuple[str, str]


@dataclass(frozen=True)
class ContrastiveOutput:
    """The rank's loss plus global per-pair diagnostics (identical on every rank).

    ``loss`` is this rank's share: averaging it over ranks gives the global loss, so logging it
    on rank 0 alone shows a noisy estimate. ``pair_losses`` holds the global loss of each pair
    that counted; ``pair_counts`` the global number of rows having both modalities, for every
    considered pair (pairs with fewer than ``min_rows`` rows are counted but carry no loss).
    """

    loss: Tensor  # () scalar
    pair_losses: dict[str, float]
    pair_counts: dict[str, int]


class LogitScale(nn.Module):
    """Learnable inverse temperature, stored as a log so it stays positive.

    Clamped at ``max_scale`` (CLIP: 100) because an unbounded scale lets the loss collapse to
    a hard argmax and training becomes unstable.
    """

    def __init__(self, init_temperature: float = 0.07, max_scale: float = 100.0) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_log_scale = math.log(max_scale)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(max=self.max_log_scale).exp()  # ()


def pair_name(a: str, b: str) -> str:
    """Key of a pair in :class:`ContrastiveOutput`, e.g. ``"ecg-report"``."""
    return f"{a}-{b}"


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_row_counts(rows: int, device: torch.device) -> list[int]:
    """First-dimension size on every rank; ``[rows]`` when not distributed."""
    _, world = _rank_and_world()
    if world == 1:
        return [rows]
    local = torch.tensor([rows], dtype=torch.long, device=device)
    gathered = [torch.zeros_like(local) for _ in range(world)]
    dist.all_gather(gathered, local)
    return [int(count.item()) for count in gathered]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """Zero rows appended so every rank sends the same shape (collectives require it)."""
    missing = rows - x.shape[0]
    if missing == 0:
        return x
    return torch.cat([x, x.new_zeros((missing, *x.shape[1:]))])


def _strip_padding(chunks: Sequence[Tensor], counts: Sequence[int]) -> Tensor:
    return torch.cat([chunk[:count] for chunk, count in zip(chunks, counts, strict=True)])


def gather_with_grad(x: Tensor, counts: Sequence[int] | None = None) -> Tensor:
    """Concatenation of ``x`` (rows first) from every rank; gradients flow back to each rank.

    The backward of ``torch.distributed.nn.functional.all_gather`` sums the gradients of every
    rank's loss into each rank's input, which is what makes the local loss correct. Ranks may hold
    different numbers of rows: ``counts`` (from :func:`gather_row_counts`, gathered here when not
    given) lets us pad before and strip after. Identity when not distributed.
    """
    _, world = _rank_and_world()
    if world == 1:
        return x
    counts = gather_row_counts(x.shape[0], x.device) if counts is None else counts
    padded = _pad_rows(x, max(counts))
    with warnings.catch_warnings():
        # Deprecated in favour of a functional collective whose backward needs reduce_scatter,
        # which gloo lacks; this one works on every backend.
        warnings.filterwarnings(
            "ignore", message=".*all_gather is deprecated", category=FutureWarning
        )
        chunks: tuple[Tensor, ...] = dist_nn.all_gather(padded)  # type: ignore[no-untyped-call]
    return _strip_padding(chunks, counts)


def _gather_without_grad(x: Tensor, counts: Sequence[int]) -> Tensor:
    _, world = _rank_and_world()
    if world == 1:
        return x
    padded = _pad_rows(x, max(counts))
    chunks = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(chunks, padded.contiguous())
    return _strip_padding(chunks, counts)


def _canonical_pairs(pairs: Sequence[Pair] | None) -> tuple[Pair, ...]:
    """Pairs in canonical modality order, validated and deduplicated; all six when ``None``."""
    if pairs is None:
        return tuple(combinations(MODALITIES, 2))
    chosen: set[Pair] = set()
    for a, b in pairs:
        unknown = {a, b} - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}")
        if a == b:
            raise ValueError(f"a contrastive pair needs two different modalities, got {a!r} twice")
        first, second = sorted((a, b), key=MODALITIES.index)
        chosen.add((first, second))
    return tuple(pair for pair in combinations(MODALITIES, 2) if pair in chosen)


def _check_inputs(embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor]) -> int:
    """Batch size shared by every embedding and mask; wrong keys or shapes are errors."""
    unknown = set(embeddings) - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; known: {list(MODALITIES)}")
    if not embeddings:
        raise ValueError("need at least one modality's embeddings")
    missing = set(embeddings) - set(present)
    if missing:
        raise ValueError(f"no presence mask for {sorted(missing)}")
    sizes = {m: e.shape[0] for m, e in embeddings.items() if e.ndim == 2}
    if len(sizes) != len(embeddings) or len(set(sizes.values())) != 1:
        shapes = {m: tuple(e.shape) for m, e in embeddings.items()}
        raise ValueError(f"embeddings must all be (B, D) with the same B, got {shapes}")
    batch = next(iter(sizes.values()))
    bad_masks = [m for m in embeddings if present[m].shape != (batch,)]
    if bad_masks:
        raise ValueError(f"presence masks of {bad_masks} are not ({batch},)")
    return batch


def _local_cross_entropy_sum(
    local_a: Tensor,
    local_b: Tensor,
    global_a: Tensor,
    global_b: Tensor,
    label_offset: int,
    scale: Tensor,
) -> Tensor:
    """Both directions' CE summed (not averaged) over this rank's rows, against all global rows.

    Summing lets the caller divide by the *global* row count, which is what keeps the loss and
    its gradients identical to the single-process ones when ranks hold different row counts.
    """
    # local_*: (n_local, D); global_*: (n_global, D); row i of local is row label_offset+i of global
    labels = torch.arange(local_a.shape[0], device=local_a.device) + label_offset  # (n_local,)
    logits_a = scale * local_a @ global_b.T  # (n_local, n_global)
    logits_b = scale * local_b @ global_a.T  # (n_local, n_global)
    a_to_b = cross_entropy(logits_a.float(), labels, reduction="sum")
    b_to_a = cross_entropy(logits_b.float(), labels, reduction="sum")
    return a_to_b + b_to_a  # ()


def _graph_connected_zero(embeddings: Mapping[str, Tensor], scale: Tensor) -> Tensor:
    """A zero that reaches every input: backward() always works and every encoder gets a (zero)
    gradient, so DDP needs no ``find_unused_parameters`` when a modality drops out of a batch."""
    zero = scale.float() * 0.0
    for embedding in embeddings.values():
        zero = zero + embedding[:0].float().sum()  # empty slice: NaNs in absent rows can't leak
    return zero  # ()


class MultiModalContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over every modality pair, masked to the rows having both.

    The total is the mean of the pair losses weighted by their global row counts; pairs with fewer
    than ``min_rows`` rows in the global batch are skipped (one row is trivially its own match).
    Under ``torch.distributed`` every rank must pass the same modality keys; the masks and
    embeddings of the other ranks are gathered, so per-rank batches may differ in size.
    """

    def __init__(self, pairs: Sequence[Pair] | None = None, min_rows: int = 2) -> None:
        super().__init__()
        self.pairs = _canonical_pairs(pairs)
        self.min_rows = min_rows

    def forward(
        self, embeddings: Mapping[str, Tensor], present: Mapping[str, Tensor], logit_scale: Tensor
    ) -> ContrastiveOutput:
        batch = _check_inputs(embeddings, present)
        modalities = [m for m in MODALITIES if m in embeddings]
        device = embeddings[modalities[0]].device
        rank, world = _rank_and_world()
        counts = gather_row_counts(batch, device)
        local_masks = torch.stack([present[m].to(device, torch.bool) for m in modalities], dim=1)
        # (N, M) over the global batch, columns in `modalities` order
        global_masks = _gather_without_grad(local_masks.to(torch.uint8), counts).bool()

        both_rows = self._rows_with_both(global_masks, modalities)  # pair → (N,) bool
        pair_counts = {pair_name(*pair): int(rows.sum().item()) for pair, rows in both_rows.items()}
        counted = [
            pair
            for pair, rows in both_rows.items()
            if pair_counts[pair_name(*pair)] >= self.min_rows
        ]
        if not counted:
            return ContrastiveOutput(
                _graph_connected_zero(embeddings, logit_scale), {}, pair_counts
            )

        local_sums = self._local_pair_sums(
            embeddings, {pair: both_rows[pair] for pair in counted}, counts, rank, logit_scale
        )  # (P,)
        valid_total = sum(pair_counts[pair_name(*pair)] for pair in counted)
        # Σ_p N_p·(S_p / 2N_p) / Σ_p N_p, with S_p split over ranks; × world undoes DDP's mean.
        loss = local_sums.sum() * world / (2 * valid_total)
        loss = loss + _graph_connected_zero(embeddings, logit_scale)
        pair_losses = self._global_pair_losses(local_sums.detach(), counted, pair_counts)
        return ContrastiveOutput(loss, pair_losses, pair_counts)

    @staticmethod
    def _local_pair_sums(
        embeddings: Mapping[str, Tensor],
        rows_by_pair: Mapping[Pair, Tensor],
        counts: Sequence[int],
        rank: int,
        logit_scale: Tensor,
    ) -> Tensor:
        """This rank's summed CE terms per pair, scored against the gathered global rows."""
        first_row = sum(counts[:rank])
        local_range = slice(first_row, first_row + counts[rank])
        needed = [m for m in MODALITIES if any(m in pair for pair in rows_by_pair)]
        gathered: dict[str, Tensor] = {m: gather_with_grad(embeddings[m], counts) for m in needed}
        sums = []
        for (a, b), rows in rows_by_pair.items():  # rows: (N,) bool
            local_rows = rows[local_range]  # (B,)
            sums.append(
                _local_cross_entropy_sum(
                    embeddings[a][local_rows],
                    embeddings[b][local_rows],
                    gathered[a][rows],
                    gathered[b][rows],
                    label_offset=int(rows[:first_row].sum().item()),
                    scale=logit_scale,
                )
            )
        return torch.stack(sums)  # (P,)

    def _rows_with_both(
        self, global_masks: Tensor, modalities: Sequence[str]
    ) -> dict[Pair, Tensor]:
        """Global rows having both modalities, for each configured pair (none if one is missing)."""
        column = {m: i for i, m in enumerate(modalities)}
        zero_rows = torch.zeros_like(global_masks[:, 0])
        return {
            (a, b): global_masks[:, column[a]] & global_masks[:, column[b]]
            if a in column and b in column
            else zero_rows
            for a, b in self.pairs
        }

    @staticmethod
    def _global_pair_losses(
        local_sums: Tensor, counted: Sequence[Pair], pair_counts: Mapping[str, int]
    ) -> dict[str, float]:
        """Each pair's loss over the whole global batch, for logging (same value on every rank)."""
        sums = local_sums.clone()  # (P,)
        if _rank_and_world()[1] > 1:
            dist.all_reduce(sums)
        return {
            pair_name(*pair): float(total) / (2 * pair_counts[pair_name(*pair)])
            for pair, total in zip(counted, sums.tolist(), strict=True)
        }

"""Masked multi-modal CLIP loss: against a naive reference, and under 2-process gloo DDP."""

from __future__ import annotations

import math
import socket
from datetime import timedelta
from itertools import combinations
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.multiprocessing.spawn import spawn
from torch.nn.functional import cross_entropy, normalize

from clinic.models.loss import (
    ContrastiveOutput,
    LogitScale,
    MultiModalContrastiveLoss,
    gather_with_grad,
)
from schemas.modalities import MODALITIES

DIM = 4
INPUT_DIM = 6
GLOBAL_ROWS = 10
# name → rows per rank: even halves, and an uneven split that exercises the padding
SPLITS = {"halves": (5, 5), "uneven": (7, 3)}


def clip_loss(a: Tensor, b: Tensor, scale: Tensor) -> Tensor:
    """Textbook symmetric CLIP loss over rows that are all matched pairs."""
    logits = scale * a @ b.T  # (n, n)
    labels = torch.arange(a.shape[0])
    return (cross_entropy(logits, labels) + cross_entropy(logits.T, labels)) / 2


def reference_loss(
    embeddings: dict[str, Tensor], present: dict[str, Tensor], scale: Tensor
) -> Tensor:
    """Independent, naive version of the masked total: count-weighted mean of pair CLIP losses."""
    weighted: list[Tensor] = []
    total = 0
    for a, b in combinations(MODALITIES, 2):
        if a not in embeddings or b not in embeddings:
            continue
        rows = present[a] & present[b]
        count = int(rows.sum())
        if count >= 2:
            weighted.append(count * clip_loss(embeddings[a][rows], embeddings[b][rows], scale))
            total += count
    return torch.stack(weighted).sum() / total


def random_batch(
    rows: int, seed: int, keep: float = 0.7
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    embeddings: dict[str, Tensor] = {
        m: normalize(torch.randn(rows, DIM, generator=generator), dim=1) for m in MODALITIES
    }
    present: dict[str, Tensor] = {
        m: torch.rand(rows, generator=generator) < keep for m in MODALITIES
    }
    return embeddings, present


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100() -> None:
    scale = LogitScale()
    assert scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(10.0)
    assert scale().item() == pytest.approx(100.0, rel=1e-5)


def test_gather_with_grad_is_identity_without_distributed() -> None:
    x = torch.randn(3, DIM)
    assert gather_with_grad(x) is x


def test_equals_handwritten_clip_loss_for_two_fully_present_modalities() -> None:
    embeddings, _ = random_batch(6, seed=1)
    pair = {m: embeddings[m] for m in ("xray", "report")}
    present = {m: torch.ones(6, dtype=torch.bool) for m in pair}
    scale = torch.tensor(1 / 0.07)
    out = MultiModalContrastiveLoss()(pair, present, scale)
    expected = clip_loss(pair["xray"], pair["report"], scale)
    torch.testing.assert_close(out.loss, expected)
    assert out.pair_counts == {"xray-report": 6} | {
        k: 0 for k in _pair_keys() if k != "xray-report"
    }
    assert out.pair_losses == {"xray-report": pytest.approx(expected.item(), rel=1e-5)}


def test_equals_masked_reference_with_random_presence() -> None:
    embeddings, present = random_batch(12, seed=2)
    scale = torch.tensor(5.0)
    out = MultiModalContrastiveLoss()(embeddings, present, scale)
    torch.testing.assert_close(out.loss, reference_loss(embeddings, present, scale))
    for a, b in combinations(MODALITIES, 2):
        assert out.pair_counts[f"{a}-{b}"] == int((present[a] & present[b]).sum())


def test_pair_absent_in_every_row_contributes_nothing() -> None:
    embeddings, present = random_batch(10, seed=3, keep=1.0)
    present["ecg"] = torch.arange(10) % 2 == 0
    present["xray"] = ~present["ecg"]  # xray and ecg never together
    scale = torch.tensor(10.0)
    everything = MultiModalContrastiveLoss()(embeddings, present, scale)
    others = [p for p in combinations(MODALITIES, 2) if p != ("xray", "ecg")]
    without_pair = MultiModalContrastiveLoss(pairs=others)(embeddings, present, scale)
    torch.testing.assert_close(everything.loss, without_pair.loss)
    assert everything.pair_counts["xray-ecg"] == 0
    assert "xray-ecg" not in everything.pair_losses
    # the absent pair's embeddings cannot matter either
    embeddings["xray"][present["ecg"]] = -embeddings["xray"][present["ecg"]]
    moved = MultiModalContrastiveLoss()(embeddings, present, scale)
    torch.testing.assert_close(moved.loss, everything.loss)


def test_modality_absent_entirely_still_gives_finite_loss_and_gradients() -> None:
    embeddings, present = random_batch(8, seed=4, keep=1.0)
    leaves = {m: e.clone().requires_grad_() for m, e in embeddings.items()}
    with torch.no_grad():
        leaves["report"].fill_(math.nan)  # what an encoder may emit for absent inputs
    present["report"] = torch.zeros(8, dtype=torch.bool)
    out = MultiModalContrastiveLoss()(leaves, present, torch.tensor(10.0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(leaf.grad).all() for leaf in leaves.values() if leaf.grad is not None)
    assert set(out.pair_losses) == {"xray-ecg", "xray-record", "ecg-record"}
    without_key = {m: e for m, e in embeddings.items() if m != "report"}
    torch.testing.assert_close(
        MultiModalContrastiveLoss()(without_key, present, torch.tensor(10.0)).loss,
        out.loss.detach(),
    )


def test_aligned_embeddings_with_large_scale_give_near_zero_loss() -> None:
    shared = torch.eye(DIM)  # (4, 4) orthonormal rows: every case its own direction
    embeddings = {m: shared.clone() for m in MODALITIES}
    present = {m: torch.ones(DIM, dtype=torch.bool) for m in MODALITIES}
    out = MultiModalContrastiveLoss()(embeddings, present, torch.tensor(100.0))
    assert out.loss.item() < 1e-6
    # while a mismatched batch is clearly penalised
    embeddings["ecg"] = shared.roll(1, dims=0)
    assert MultiModalContrastiveLoss()(embeddings, present, torch.tensor(100.0)).loss.item() > 10


def test_permuting_rows_consistently_leaves_loss_unchanged() -> None:
    embeddings, present = random_batch(11, seed=5)
    order = torch.randperm(11, generator=torch.Generator().manual_seed(0))
    scale = torch.tensor(8.0)
    loss = MultiModalContrastiveLoss()(embeddings, present, scale)
    permuted = MultiModalContrastiveLoss()(
        {m: e[order] for m, e in embeddings.items()},
        {m: p[order] for m, p in present.items()},
        scale,
    )
    torch.testing.assert_close(permuted.loss, loss.loss)
    assert permuted.pair_losses == pytest.approx(loss.pair_losses, rel=1e-5)


def test_pairs_option_restricts_and_canonicalises_pair_names() -> None:
    embeddings, present = random_batch(9, seed=6, keep=1.0)
    scale = torch.tensor(7.0)
    out = MultiModalContrastiveLoss(pairs=[("report", "ecg")])(embeddings, present, scale)
    torch.testing.assert_close(out.loss, clip_loss(embeddings["ecg"], embeddings["report"], scale))
    assert out.pair_counts == {"ecg-report": 9}
    with pytest.raises(ValueError, match="unknown"):
        MultiModalContrastiveLoss(pairs=[("xray", "mri")])
    with pytest.raises(ValueError, match="different"):
        MultiModalContrastiveLoss(pairs=[("ecg", "ecg")])


def test_too_few_rows_gives_a_zero_loss_that_still_backpropagates() -> None:
    embeddings, _ = random_batch(4, seed=7)
    leaves = {m: e.clone().requires_grad_() for m, e in embeddings.items()}
    lonely = {m: torch.arange(4) == i for i, m in enumerate(MODALITIES)}  # no two share a row
    scale = LogitScale()
    out = MultiModalContrastiveLoss()(leaves, lonely, scale())
    out.loss.backward()
    assert out.loss.item() == 0.0
    assert out.pair_losses == {}
    assert all(leaf.grad is not None and not leaf.grad.any() for leaf in leaves.values())


def test_mismatched_inputs_are_rejected() -> None:
    embeddings, present = random_batch(4, seed=8)
    with pytest.raises(ValueError, match="presence mask"):
        MultiModalContrastiveLoss()(embeddings, {"xray": present["xray"]}, torch.tensor(1.0))
    embeddings["ecg"] = embeddings["ecg"][:3]
    with pytest.raises(ValueError, match="same B"):
        MultiModalContrastiveLoss()(embeddings, present, torch.tensor(1.0))


def _pair_keys() -> list[str]:
    return [f"{a}-{b}" for a, b in combinations(MODALITIES, 2)]


# --- DDP: two gloo processes must reproduce the single-process loss and gradients ---


def _global_inputs() -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Raw inputs and presence of the global batch; identical in every process (fixed seed)."""
    generator = torch.Generator().manual_seed(11)
    inputs: dict[str, Tensor] = {
        m: torch.randn(GLOBAL_ROWS, INPUT_DIM, generator=generator) for m in MODALITIES
    }
    present: dict[str, Tensor] = {
        m: torch.rand(GLOBAL_ROWS, generator=generator) < 0.7 for m in MODALITIES
    }
    present["xray"][5:] = False  # X-ray pairs live on rank 0 only, in both splits
    present["report"] = torch.arange(GLOBAL_ROWS) == 2  # one row: report pairs are skipped
    return inputs, present


def _encoders() -> nn.ModuleDict:
    """A tiny Linear per modality with the same weights in every process."""
    generator = torch.Generator().manual_seed(12)
    encoders = nn.ModuleDict({m: nn.Linear(INPUT_DIM, DIM) for m in MODALITIES})
    with torch.no_grad():
        for parameter in encoders.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return encoders


def _loss_and_grads(rows: slice) -> tuple[ContrastiveOutput, dict[str, Tensor]]:
    """Loss on ``rows`` of the global batch and the (local) gradients of every parameter."""
    inputs, present = _global_inputs()
    encoders, scale = _encoders(), LogitScale()
    embeddings = {m: normalize(encoders[m](x[rows]), dim=1) for m, x in inputs.items()}
    local_present = {m: p[rows] for m, p in present.items()}
    out = MultiModalContrastiveLoss()(embeddings, local_present, scale())
    out.loss.backward()
    grads = {f"encoders.{n}": p.grad for n, p in encoders.named_parameters() if p.grad is not None}
    assert scale.log_scale.grad is not None
    return out, grads | {"log_scale": scale.log_scale.grad}


def _ddp_worker(rank: int, world: int, address: str, out_dir: str) -> None:
    """One rank: local loss + backward, then DDP's gradient average, saved for the parent."""
    torch.set_num_threads(1)  # this process only: two ranks share two cores
    dist.init_process_group(
        "gloo", init_method=address, rank=rank, world_size=world, timeout=timedelta(seconds=60)
    )
    try:
        for name, counts in SPLITS.items():
            start = sum(counts[:rank])
            out, grads = _loss_and_grads(slice(start, start + counts[rank]))
            for grad in grads.values():
                dist.all_reduce(grad)
                grad /= world
            result = {"loss": out.loss.detach(), "grads": grads}
            torch.save(
                result | {"pairs": (out.pair_losses, out.pair_counts)},
                f"{out_dir}/{name}-{rank}.pt",
            )
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_process_ddp_matches_single_process_loss_and_gradients(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{_free_port()}"
    spawn(_ddp_worker, args=(2, address, str(tmp_path)), nprocs=2, join=True)  # type: ignore[no-untyped-call]

    single, single_grads = _loss_and_grads(slice(None))
    assert all(single.pair_counts[k] >= 2 for k in ("xray-ecg", "xray-record", "ecg-record"))
    assert single.pair_counts["ecg-report"] == 1 and "ecg-report" not in single.pair_losses
    for name in SPLITS:
        ranks = [torch.load(tmp_path / f"{name}-{r}.pt") for r in range(2)]
        mean_loss = (ranks[0]["loss"] + ranks[1]["loss"]) / 2
        torch.testing.assert_close(mean_loss, single.loss.detach(), atol=1e-5, rtol=0)
        for rank in ranks:
            assert rank["grads"].keys() == single_grads.keys()
            for key, grad in single_grads.items():
                torch.testing.assert_close(rank["grads"][key], grad, atol=1e-5, rtol=0, msg=key)
            pair_losses, pair_counts = rank["pairs"]
            assert pair_counts == single.pair_counts
            assert pair_losses == pytest.approx(single.pair_losses, abs=1e-5)

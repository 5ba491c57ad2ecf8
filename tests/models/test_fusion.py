"""ModalityFusion: shapes, the padding mask, modality dropout and the reconstruction loss."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.nn import functional

from clinic.models.fusion import ModalityFusion, drop_modalities
from schemas.modalities import MODALITIES

DIM, LABELS = 16, 3


def make_fusion(seed: int = 0) -> ModalityFusion:
    torch.manual_seed(seed)
    return ModalityFusion(DIM, LABELS, layers=1, heads=2, dim_feedforward=32).eval()


def unit_embeddings(batch: int, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        m: functional.normalize(torch.randn(batch, DIM, generator=generator), dim=-1)
        for m in MODALITIES
    }  # modality → (B, D)


def random_presence(batch: int, seed: int = 0, rate: float = 0.6) -> dict[str, Tensor]:
    """Each modality present with ``rate``; row 0 has everything, row 1 only the ECG."""
    generator = torch.Generator().manual_seed(seed)
    present: dict[str, Tensor] = {
        m: torch.rand(batch, generator=generator) < rate for m in MODALITIES
    }
    for modality in MODALITIES:
        present[modality][0] = True
        present[modality][1] = modality == "ecg"
    return present  # modality → (B,) bool


def test_output_shapes() -> None:
    fusion = make_fusion()
    out = fusion(unit_embeddings(5), random_presence(5))
    assert out.logits.shape == (5, LABELS)
    assert out.fused.shape == (5, DIM)
    assert out.reconstruction_loss.shape == ()
    assert torch.isfinite(out.logits).all()


def test_values_of_absent_modalities_do_not_change_the_logits() -> None:
    fusion = make_fusion()
    embeddings, present = unit_embeddings(8), random_presence(8)
    baseline = fusion(embeddings, present).logits
    scrambled = dict(embeddings)
    for modality in MODALITIES:
        noise = torch.randn(8, DIM) * 100.0
        scrambled[modality] = torch.where(present[modality][:, None], embeddings[modality], noise)
    torch.testing.assert_close(fusion(scrambled, present).logits, baseline)


def test_values_of_present_modalities_do_change_the_logits() -> None:
    """The counterpart of the padding-mask test: otherwise it would pass on a constant model."""
    fusion = make_fusion()
    embeddings, present = unit_embeddings(8), random_presence(8)
    changed = {**embeddings, "xray": -embeddings["xray"]}
    logits, other = fusion(embeddings, present).logits, fusion(changed, present).logits
    assert not torch.allclose(logits[0], other[0], atol=1e-4)  # row 0 has an X-ray
    torch.testing.assert_close(logits[1], other[1])  # row 1 has the ECG only


@torch.no_grad()
def test_each_row_attends_only_to_cls_and_its_present_tokens() -> None:
    """Reference: the encoder run on [CLS] + the row's present tokens alone, without padding."""
    fusion = make_fusion()
    embeddings, present = unit_embeddings(8), random_presence(8)
    out = fusion(embeddings, present)
    for row in range(8):
        tokens = [fusion.cls[0]] + [
            embeddings[m][row : row + 1] * fusion.input_scale + fusion.type_embedding[i : i + 1]
            for i, m in enumerate(MODALITIES)
            if present[m][row]
        ]
        fused = fusion.norm(fusion.encoder(torch.cat(tokens)[None])[:, 0])  # (1, D)
        torch.testing.assert_close(out.fused[row], fused[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits[row], fusion.head(fused)[0], atol=1e-5, rtol=1e-5)


def test_a_missing_key_counts_as_absent() -> None:
    fusion = make_fusion()
    embeddings, present = unit_embeddings(6), random_presence(6)
    without = {m: e for m, e in embeddings.items() if m != "record"}
    no_record = {**present, "record": torch.zeros(6, dtype=torch.bool)}
    torch.testing.assert_close(
        fusion(without, {m: p for m, p in present.items() if m != "record"}).logits,
        fusion(embeddings, no_record).logits,
    )


def test_drop_never_empties_a_row_and_only_drops_present_modalities() -> None:
    present = random_presence(400, seed=1, rate=0.5)
    generator = torch.Generator().manual_seed(0)
    kept, dropped = drop_modalities(present, 0.9, generator)
    had = torch.stack([present[m] for m in MODALITIES], dim=1)  # (B, M)
    keep = torch.stack([kept[m] for m in MODALITIES], dim=1)
    drop = torch.stack([dropped[m] for m in MODALITIES], dim=1)
    assert not (drop & ~had).any(), "dropped a modality the row did not have"
    assert not (keep & ~had).any(), "invented a modality"
    assert torch.equal(keep | drop, had) and not (keep & drop).any()
    assert (keep.sum(dim=1) >= 1)[had.any(dim=1)].all()
    assert drop.sum() > had.sum() // 2, "probability 0.9 should drop most modalities"


def test_drop_everything_keeps_exactly_one_per_row() -> None:
    present = random_presence(100, seed=2)
    kept, _ = drop_modalities(present, 1.0, torch.Generator().manual_seed(0))
    keep = torch.stack([kept[m] for m in MODALITIES], dim=1)
    had_any = torch.stack([present[m] for m in MODALITIES], dim=1).any(dim=1)
    assert torch.equal(keep.sum(dim=1), had_any.long())


def test_a_row_without_any_modality_stays_empty() -> None:
    present: dict[str, Tensor] = {m: torch.tensor([False, True]) for m in MODALITIES}
    kept, dropped = drop_modalities(present, 1.0, torch.Generator().manual_seed(0))
    assert not any(bool(kept[m][0]) or bool(dropped[m][0]) for m in MODALITIES)


def test_probability_zero_drops_nothing() -> None:
    present = random_presence(50, seed=3)
    kept, dropped = drop_modalities(present, 0.0)
    for modality in MODALITIES:
        assert torch.equal(kept[modality], present[modality])
        assert not dropped[modality].any()


@pytest.mark.parametrize("probability", [0.3, 0.7])
def test_drop_is_deterministic_with_a_generator(probability: float) -> None:
    present = random_presence(200, seed=4)

    def run(seed: int) -> Tensor:
        kept, _ = drop_modalities(present, probability, torch.Generator().manual_seed(seed))
        return torch.stack([kept[m] for m in MODALITIES], dim=1)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


def test_reconstruction_loss_is_zero_when_nothing_is_dropped() -> None:
    fusion = make_fusion()
    embeddings, present = unit_embeddings(4), random_presence(4)
    assert float(fusion(embeddings, present).reconstruction_loss) == 0.0
    none_dropped = {m: torch.zeros(4, dtype=torch.bool) for m in MODALITIES}
    assert float(fusion(embeddings, present, none_dropped).reconstruction_loss) == 0.0


@torch.no_grad()
def test_reconstruction_loss_is_one_minus_cosine_to_the_dropped_embedding() -> None:
    fusion = make_fusion()
    embeddings, present = unit_embeddings(6), random_presence(6, rate=1.0)
    dropped = {m: torch.zeros(6, dtype=torch.bool) for m in MODALITIES}
    dropped["xray"] = torch.tensor([True, False, True, False, False, True])
    kept = {m: present[m] & ~dropped[m] for m in MODALITIES}
    out = fusion(embeddings, kept, dropped)
    rows = dropped["xray"]
    predicted = fusion.reconstruct["xray"](out.fused[rows])
    expected = 1.0 - functional.cosine_similarity(predicted, embeddings["xray"][rows]).mean()
    torch.testing.assert_close(out.reconstruction_loss, expected)


def test_reconstruction_loss_decreases_when_trained_alone() -> None:
    fusion = make_fusion(seed=1)
    embeddings, present = unit_embeddings(32, seed=5), random_presence(32, seed=5, rate=1.0)
    kept, dropped = drop_modalities(present, 0.5, torch.Generator().manual_seed(0))
    assert any(bool(rows.any()) for rows in dropped.values())
    optimiser = torch.optim.Adam(fusion.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = fusion(embeddings, kept, dropped).reconstruction_loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert 0.0 < losses[0] <= 2.0
    assert losses[-1] < 0.5 * losses[0]

"""Embedding tables and fusion heads trained on them: row / subset views, learning a synthetic
problem, honouring the requested modalities and NaN logits for rows without the subset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor
from torch.nn import functional

from clinic.models.fusion import ModalityFusion
from clinic.train.embeddings import (
    EmbeddingTable,
    FusionRecipe,
    fusion_logits,
    train_fusion,
    validation_loss,
)
from schemas.modalities import MODALITIES

D = 8
RECIPE = FusionRecipe(epochs=20, batch_size=64, lr=5e-3, weight_decay=0.0, drop_probability=0.0)


def synthetic_table(n: int, seed: int, presence: float = 0.75) -> EmbeddingTable:
    """Random unit embeddings, each modality present with ``presence``; label 0 shifts the
    ECG's first coordinate, label 1 the X-ray's second, every other coordinate is noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, 2, generator=generator) < 0.4).float()
    raw: dict[str, Tensor] = {m: torch.randn(n, D, generator=generator) for m in MODALITIES}
    raw["ecg"][:, 0] += 2.0 * (2.0 * labels[:, 0] - 1.0)
    raw["xray"][:, 1] += 2.0 * (2.0 * labels[:, 1] - 1.0)
    embeddings = {m: functional.normalize(e, dim=1) for m, e in raw.items()}
    present: dict[str, Tensor] = {
        m: torch.rand(n, generator=generator) < presence for m in MODALITIES
    }
    return EmbeddingTable(embeddings, present, labels)


def new_fusion(num_labels: int = 2) -> ModalityFusion:
    torch.manual_seed(0)
    return ModalityFusion(D, num_labels, layers=1, heads=2, dim_feedforward=32, dropout=0.0)


def auroc(fusion: ModalityFusion, table: EmbeddingTable, label: int, modality: str) -> float:
    """Held-out AUROC of ``label`` on the rows that have ``modality``, seeing only it."""
    logits = fusion_logits(fusion, table, (modality,))
    rows = table.present[modality].numpy()
    return float(roc_auc_score(table.labels[rows, label].numpy(), logits[rows, label]))


def small_table() -> EmbeddingTable:
    embeddings = {"xray": torch.arange(4.0)[:, None].repeat(1, 2),
                  "ecg": -torch.arange(4.0)[:, None].repeat(1, 2)}  # fmt: skip
    present = {"xray": torch.tensor([True, True, False, False]),
               "ecg": torch.tensor([True, False, True, False])}  # fmt: skip
    labels = torch.tensor([[1.0], [0.0], [float("nan")], [1.0]])
    return EmbeddingTable(embeddings, present, labels)


# --- EmbeddingTable --------------------------------------------------------------------------


def test_rows_selects_the_same_rows_everywhere() -> None:
    table = small_table()
    picked = table.rows(torch.tensor([3, 0]))
    assert len(picked) == 2
    assert picked.embeddings["xray"][:, 0].tolist() == [3.0, 0.0]
    assert picked.embeddings["ecg"][:, 0].tolist() == [-3.0, -0.0]
    assert picked.present["xray"].tolist() == [False, True]
    assert picked.present["ecg"].tolist() == [False, True]
    assert picked.labels[:, 0].tolist() == [1.0, 1.0]


def test_with_subset_hides_other_modalities_and_keeps_rows() -> None:
    table = small_table()
    view = table.with_subset(("ecg",))
    assert len(view) == len(table)
    assert view.present["xray"].tolist() == [False] * 4
    assert view.present["ecg"].tolist() == table.present["ecg"].tolist()
    assert table.present["xray"].tolist() == [True, True, False, False]  # original untouched
    assert view.embeddings["xray"] is table.embeddings["xray"]


def test_having_requires_every_modality() -> None:
    table = small_table()
    assert table.having(("xray",)).tolist() == [True, True, False, False]
    assert table.having(("xray", "ecg")).tolist() == [True, False, False, False]
    assert table.having(()).tolist() == [True] * 4
    assert table.having(("report",)).tolist() == [False] * 4  # not in the table at all


# --- train_fusion ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables() -> tuple[EmbeddingTable, EmbeddingTable]:
    return synthetic_table(256, seed=1), synthetic_table(256, seed=2)


def test_train_fusion_learns_a_synthetic_problem(
    tables: tuple[EmbeddingTable, EmbeddingTable],
) -> None:
    train, test = tables
    untrained = new_fusion()
    before = auroc(untrained, test, 0, "ecg"), auroc(untrained, test, 1, "xray")
    fusion = train_fusion(new_fusion(), train, RECIPE)
    assert not fusion.training
    assert max(before) < 0.8
    assert auroc(fusion, test, 0, "ecg") > 0.9
    assert auroc(fusion, test, 1, "xray") > 0.9
    assert validation_loss(fusion, test) < validation_loss(untrained, test)


def test_train_fusion_uses_only_the_requested_modalities(
    tables: tuple[EmbeddingTable, EmbeddingTable],
) -> None:
    """Every other modality's embeddings are NaN: seeing any of them would poison the head."""
    train, test = tables
    poisoned = EmbeddingTable(
        {m: e if m == "ecg" else torch.full_like(e, float("nan"))
         for m, e in train.embeddings.items()},
        train.present,
        train.labels,
    )  # fmt: skip
    fusion = train_fusion(new_fusion(), poisoned, RECIPE, modalities=("ecg",))
    assert all(torch.isfinite(p).all() for p in fusion.parameters())
    assert auroc(fusion, test, 0, "ecg") > 0.9
    assert np.isfinite(fusion_logits(fusion, poisoned, ("ecg",))[train.present["ecg"]]).all()


def test_modalities_outside_the_subset_are_never_reconstructed(
    tables: tuple[EmbeddingTable, EmbeddingTable],
) -> None:
    """With dropout on, a head trained on (ecg, record) never drops (so never reconstructs) the
    X-ray: its reconstruction weights stay untouched, unlike a head trained on everything."""
    train, _ = tables
    recipe = FusionRecipe(epochs=2, batch_size=64, drop_probability=0.5)
    initial = new_fusion().reconstruct["xray"].state_dict()
    subset = train_fusion(new_fusion(), train, recipe, modalities=("ecg", "record"))
    everything = train_fusion(new_fusion(), train, recipe)
    for name, value in initial.items():
        assert torch.equal(subset.reconstruct["xray"].state_dict()[name], value)
    assert any(not torch.equal(everything.reconstruct["xray"].state_dict()[n], v)
               for n, v in initial.items())  # fmt: skip


def test_train_fusion_is_reproducible(tables: tuple[EmbeddingTable, EmbeddingTable]) -> None:
    train, _ = tables
    recipe = FusionRecipe(epochs=2, batch_size=64, drop_probability=0.3, seed=4)
    first = train_fusion(new_fusion(), train, recipe).state_dict()
    second = train_fusion(new_fusion(), train, recipe).state_dict()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_validation_keeps_the_best_epoch(tables: tuple[EmbeddingTable, EmbeddingTable]) -> None:
    train, val = synthetic_table(48, seed=5), tables[1]
    recipe = FusionRecipe(epochs=25, batch_size=16, lr=1e-2, weight_decay=0.0)
    last = train_fusion(new_fusion(), train, recipe)
    best = train_fusion(new_fusion(), train, recipe, validation=val)
    # 48 training rows and 25 epochs overfit: the last epoch is not the best one.
    assert validation_loss(best, val) < validation_loss(last, val) - 0.01


def test_train_fusion_accepts_a_table_of_fewer_modalities() -> None:
    full = synthetic_table(64, seed=3)
    keep = ("xray", "ecg")
    partial = EmbeddingTable({m: full.embeddings[m] for m in keep},
                             {m: full.present[m] for m in keep}, full.labels)  # fmt: skip
    fusion = train_fusion(new_fusion(), partial, FusionRecipe(epochs=1, batch_size=32))
    assert np.isfinite(fusion_logits(fusion, partial)[partial.having(("ecg",)).numpy()]).all()


# --- fusion_logits ---------------------------------------------------------------------------


def test_fusion_logits_are_nan_for_rows_without_the_subset() -> None:
    table = synthetic_table(40, seed=7, presence=0.5)
    fusion = new_fusion()
    for subset in [("ecg",), ("xray", "record"), MODALITIES]:
        logits = fusion_logits(fusion, table, subset)
        assert logits.shape == (40, 2) and logits.dtype == np.float64
        usable = np.zeros(40, dtype=bool)
        for modality in subset:
            usable |= table.present[modality].numpy()
        assert not usable.all() and usable.any()
        assert np.isnan(logits[~usable]).all()
        assert np.isfinite(logits[usable]).all()


def test_fusion_logits_see_only_the_requested_modalities() -> None:
    table = synthetic_table(40, seed=8, presence=0.8)
    fusion = new_fusion()
    logits = fusion_logits(fusion, table, ("ecg",))
    rows = table.present["ecg"]
    ecg_only: dict[str, Tensor] = {m: torch.zeros_like(p[rows]) for m, p in table.present.items()}
    ecg_only["ecg"] = torch.ones(int(rows.sum()), dtype=torch.bool)
    with torch.no_grad():
        expected = fusion({m: e[rows] for m, e in table.embeddings.items()}, ecg_only).logits
    np.testing.assert_allclose(logits[rows.numpy()], expected.double().numpy(), atol=1e-6)
    with_everything = fusion_logits(fusion, table)
    assert not np.allclose(with_everything[rows.numpy()], logits[rows.numpy()])


def test_fusion_logits_of_a_subset_no_row_has_are_all_nan() -> None:
    table = small_table()
    logits = fusion_logits(new_fusion(num_labels=1), table, ("report",))
    assert np.isnan(logits).all()

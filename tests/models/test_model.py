"""ClinicModel: per-modality embeddings, restricted models, hiding, and LoRA through the model."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import Tensor

from clinic.data.dataset import PreprocessConfig
from clinic.data.records import RecordNormalizer
from clinic.models.config import ModelConfig
from clinic.models.ecg import EcgEncoder
from clinic.models.lora import AdapterSpec, attach_adapter, base_content_hash
from clinic.models.model import ClinicModel
from clinic.train.losses import masked_bce
from schemas.modalities import MODALITIES
from tests.modelkit import tiny_config

LABELS = ("heart_failure", "pneumonia", "atrial_fibrillation")
RECORD_FEATURES = ("age_years", "heart_rate_bpm", "bnp_pg_ml")
BATCH = 6
# Which rows (of BATCH) have each modality: every row something, no modality everywhere.
PRESENT = {
    "xray": (True, True, False, False, True, False),
    "ecg": (True, False, True, False, True, True),
    "record": (True, True, True, True, False, False),
    "report": (False, True, False, True, True, False),
}


def tiny_preprocess(config: ModelConfig) -> PreprocessConfig:
    """Input sizes that match ``config``; a record normaliser of three features."""
    normaliser = RecordNormalizer(RECORD_FEATURES, (60.0, 70.0, 5.0), (15.0, 12.0, 1.5))
    return PreprocessConfig(
        image_size=config.xray.image_size,
        ecg_rate_hz=config.ecg.sampling_rate_hz,
        ecg_window=config.ecg.window_samples,
        text_max_length=config.report.max_length,
        record=normaliser,
    )


def tiny_model(
    config: ModelConfig | None = None, modalities: Sequence[str] = MODALITIES, seed: int = 0
) -> ClinicModel:
    torch.manual_seed(seed)
    config = config or tiny_config()
    return ClinicModel(config, tiny_preprocess(config), LABELS, modalities).eval()


def tiny_batch(
    config: ModelConfig, seed: int = 0, present: dict[str, Sequence[bool]] | None = None
) -> dict[str, Tensor]:
    """A collated batch as ``collate_cases`` makes it (zeros where a modality is absent)."""
    generator = torch.Generator().manual_seed(seed)
    flags = {m: torch.tensor(v) for m, v in (present or PRESENT).items()}
    size, window, length = (
        config.xray.image_size,
        config.ecg.window_samples,
        config.report.max_length,
    )
    n = len(next(iter(flags.values())))

    def where(modality: str, values: Tensor) -> Tensor:
        shape = (n,) + (1,) * (values.ndim - 1)
        return values * flags[modality].reshape(shape).to(values.dtype)

    ids = torch.randint(1000, 2000, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[:, length // 2 :] = 0
    return {
        "xray": where("xray", torch.rand(n, 1, size, size, generator=generator)),
        "ecg": where("ecg", torch.randn(n, 12, window, generator=generator)),
        "ecg_lead_mask": flags["ecg"][:, None].expand(n, 12).clone(),
        "record": where("record", torch.randn(n, len(RECORD_FEATURES), generator=generator)),
        "record_missing": torch.zeros(n, len(RECORD_FEATURES)),
        "report_input_ids": where("report", ids * mask),
        "report_attention_mask": where("report", mask),
        "labels": torch.randint(0, 2, (n, len(LABELS)), generator=generator).float(),
        **{f"present_{m}": f for m, f in flags.items()},
    }


@pytest.fixture(scope="module")
def model() -> ClinicModel:
    return tiny_model()


def test_embed_gives_unit_rows_where_present_and_zeros_where_absent(model: ClinicModel) -> None:
    batch = tiny_batch(model.config)
    embedded = model.embed(batch)
    assert list(embedded) == list(MODALITIES)
    for modality, rows in embedded.items():
        present = batch[f"present_{modality}"]
        assert rows.shape == (BATCH, model.config.embed_dim)
        assert torch.count_nonzero(rows[~present]) == 0, modality
        norms = rows[present].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


def test_embedding_of_a_row_does_not_depend_on_the_other_rows(model: ClinicModel) -> None:
    """Encoders run on present rows only (eval mode): a row's vector is its own."""
    batch = tiny_batch(model.config)
    alone = {key: value[:1] for key, value in batch.items()}
    together, single = model.embed(batch), model.embed(alone)
    for modality in MODALITIES:
        torch.testing.assert_close(single[modality][0], together[modality][0])


def test_forward_shapes_and_eval_ignores_drop_probability(model: ClinicModel) -> None:
    batch = tiny_batch(model.config)
    out = model(batch)
    assert out.logits.shape == (BATCH, len(LABELS))
    assert out.fused.shape == (BATCH, model.config.embed_dim)
    torch.testing.assert_close(model(batch, drop_probability=0.9).logits, out.logits)
    for modality in MODALITIES:
        assert torch.equal(out.present[modality], batch[f"present_{modality}"])


def test_training_drops_modalities_but_keeps_one_per_row() -> None:
    model = tiny_model().train()
    out = model(tiny_batch(model.config), drop_probability=0.99)
    kept = torch.stack([out.present[m] for m in MODALITIES], dim=1)  # (B, M)
    assert torch.equal(kept.sum(dim=1), torch.ones(BATCH, dtype=torch.long))
    assert float(out.reconstruction_loss.detach()) > 0.0


def test_an_ecg_only_model_ignores_every_other_modality() -> None:
    model = tiny_model(modalities=("ecg",))
    assert tuple(model.encoders) == ("ecg",) and model.modalities == ("ecg",)
    batch = tiny_batch(model.config)
    other = tiny_batch(model.config, seed=1, present={**PRESENT, "xray": (True,) * BATCH})
    for key in ("ecg", "ecg_lead_mask", "present_ecg"):
        other[key] = batch[key]
    assert list(model.embed(batch)) == ["ecg"]
    torch.testing.assert_close(model(other).logits, model(batch).logits)
    assert not torch.equal(other["xray"], batch["xray"])


def test_a_restricted_model_keeps_the_canonical_order() -> None:
    model = tiny_model(modalities=("report", "xray"))
    assert model.modalities == ("xray", "report")


def test_hide_acts_like_the_modality_being_absent(model: ClinicModel) -> None:
    batch = tiny_batch(model.config)
    without_xray = {**batch, "present_xray": torch.zeros(BATCH, dtype=torch.bool)}
    hidden = model(batch, hide=("xray",))
    assert not hidden.present["xray"].any()
    torch.testing.assert_close(hidden.logits, model(without_xray).logits)
    shown = model(batch).logits
    assert not torch.allclose(hidden.logits[0], shown[0], atol=1e-5)  # row 0 has an X-ray
    torch.testing.assert_close(hidden.logits[2], shown[2])  # row 2 has none


def test_lora_on_an_encoder_trains_only_its_adapter_through_the_full_loss() -> None:
    model = tiny_model().train()
    model.requires_grad_(False)
    encoder = model.encoders["ecg"]
    assert isinstance(encoder, EcgEncoder)
    attach_adapter(encoder, AdapterSpec(tuple(encoder.lora_targets), rank=2, alpha=4), "site")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        "lora_" in name and name.startswith("encoders.ecg.") for name in trainable
    )
    batch = tiny_batch(model.config)
    out = model(batch, drop_probability=0.0)
    loss = masked_bce(out.logits, batch["labels"]) + out.reconstruction_loss
    loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert any(float(p.grad.abs().sum()) > 0 for p in model.parameters() if p.grad is not None)
    base_hash = base_content_hash(encoder)  # after the train-mode pass moved BatchNorm statistics
    before = model.eval()(batch).logits
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    optimiser.step()
    assert base_content_hash(encoder) == base_hash
    assert not torch.allclose(model(batch).logits, before)

"""FrozenFeatureCache alone and inside ClinicModel: the direct results, with fewer calls."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from clinic.models.cache import FrozenFeatureCache
from clinic.models.lora import AdapterSpec, attach_adapter
from clinic.models.model import ClinicModel
from clinic.models.xray import XrayEncoder
from tests.modelkit import tiny_config
from tests.models.test_model import tiny_batch, tiny_model


class CountingCompute:
    """A stand-in backbone that records how many rows it was asked to compute."""

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, values: Tensor, scale: Tensor) -> Tensor:
        self.rows += values.shape[0]
        return values.sum(dim=1, keepdim=True) * scale  # (B, 1)


def test_cached_features_equal_direct_computation_and_count_hits() -> None:
    cache, compute = FrozenFeatureCache(), CountingCompute()
    values, scale = torch.randn(5, 3), torch.rand(5, 1)
    first = cache.features("xray", compute, values, scale)
    torch.testing.assert_close(first, compute(values, scale))
    compute.rows = 0
    assert (cache.hits, cache.misses, len(cache)) == (0, 5, 5)
    order = torch.tensor([4, 2, 0, 1, 3])
    again = cache.features("xray", compute, values[order], scale[order])
    torch.testing.assert_close(again, first[order])
    assert (cache.hits, cache.misses, compute.rows) == (5, 5, 0)


def test_only_new_rows_are_computed() -> None:
    cache, compute = FrozenFeatureCache(), CountingCompute()
    values, scale = torch.randn(4, 3), torch.ones(4, 1)
    cache.features("xray", compute, values[:3], scale[:3])
    compute.rows = 0
    out = cache.features("xray", compute, values, scale)
    assert compute.rows == 1 and (cache.hits, cache.misses) == (3, 4)
    torch.testing.assert_close(out, compute(values, scale))


def test_every_input_and_the_modality_are_part_of_the_key() -> None:
    cache, compute = FrozenFeatureCache(), CountingCompute()
    values = torch.randn(2, 3)
    cache.features("xray", compute, values, torch.ones(2, 1))
    doubled = cache.features("xray", compute, values, torch.full((2, 1), 2.0))
    torch.testing.assert_close(doubled, 2.0 * values.sum(dim=1, keepdim=True))
    cache.features("report", compute, values, torch.ones(2, 1))
    assert cache.hits == 0 and len(cache) == 6


def test_the_cache_is_emptied_rather_than_grown_past_its_limit() -> None:
    cache, compute = FrozenFeatureCache(max_entries=4), CountingCompute()
    cache.features("xray", compute, torch.randn(3, 3), torch.ones(3, 1))
    out = cache.features("xray", compute, torch.randn(2, 3), torch.ones(2, 1))
    assert len(cache) == 2 and out.shape == (2, 1)
    cache.clear()
    assert len(cache) == 0


def frozen_xray_model() -> ClinicModel:
    config = tiny_config()
    config = dataclasses.replace(
        config, xray=dataclasses.replace(config.xray, freeze_backbone=True)
    )
    return tiny_model(config)


def test_model_embeddings_from_the_cache_equal_the_encoders_output() -> None:
    model = frozen_xray_model()
    assert model.config.report.freeze_base  # both image and text backbones are cached
    batch = tiny_batch(model.config)
    embedded = model.embed(batch)
    for modality, keys in (("xray", ("xray",)),
                           ("report", ("report_input_ids", "report_attention_mask"))):  # fmt: skip
        rows = batch[f"present_{modality}"]
        with torch.no_grad():
            direct = model.encoders[modality](*(batch[key][rows] for key in keys))
        torch.testing.assert_close(embedded[modality][rows], direct)
    expected_rows = int(batch["present_xray"].sum() + batch["present_report"].sum())
    assert (model.feature_cache.hits, model.feature_cache.misses) == (0, expected_rows)
    again = model.embed(batch)
    assert model.feature_cache.hits == expected_rows
    for modality in ("xray", "report"):
        torch.testing.assert_close(again[modality], embedded[modality])


def test_cached_features_still_let_the_projection_learn() -> None:
    model = frozen_xray_model().train()
    batch = tiny_batch(model.config)
    model.embed(batch)  # fill the cache
    model.embed(batch)["xray"].sum().backward()  # type: ignore[no-untyped-call]
    encoder = model.encoders["xray"]
    assert isinstance(encoder, XrayEncoder)
    assert all(p.grad is not None for p in encoder.projection.parameters())
    assert all(p.grad is None for p in encoder.backbone.parameters())


def test_an_adapter_on_the_backbone_bypasses_the_cache() -> None:
    model = frozen_xray_model()
    encoder = model.encoders["xray"]
    assert isinstance(encoder, XrayEncoder)
    attach_adapter(encoder, AdapterSpec(tuple(encoder.lora_targets), rank=2, alpha=4), "site")
    batch = tiny_batch(model.config)
    model.embed(batch)
    model.embed(batch)
    n_reports = int(batch["present_report"].sum())
    assert model.feature_cache.hits == n_reports  # reports only; the adapted X-ray is live

"""Per-case explanations: shapes, absent modalities, IG completeness, report occlusion, and a
model left exactly as it was found (no gradients, training flags, feature cache).

A tiny random model explains cases of the tiny phantom store (opened read-only), collated the way
inference collates them. Reference values come from the model's own forward pass, never from the
code under test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from clinic.data.cases import Case, common_label_names, load_cases
from clinic.data.dataset import make_collate
from clinic.inference.explain import (
    ARTIFACT_KEYS,
    Explanation,
    decode_artifact,
    encode_artifact,
    explain_case,
    input_attribution,
    integrated_gradients,
    report_words,
)
from clinic.models.config import ModelConfig
from clinic.models.model import ClinicModel
from clinic.settings import Settings
from clinic.store.blobs import decode_array
from clinic.store.store import Store
from clinic.train.data import fit_measurements, fit_preprocess, make_dataset
from tests.modelkit import TINY_COHORT, tiny_config

FULL = ("xray", "ecg", "record", "report")
INPUT_KEY = {"xray": "xray", "ecg": "ecg"}
# IG points per modality for the completeness checks, and the tolerance: the X-ray path (ReLU
# kinks from a black image) needs many points (measured on this model: up to 33 % off at 16,
# at most 1.2 % at 256), the ECG is already exact at 8. A wrong scaling or a missing term
# would miss by ~100 %.
COMPLETENESS_STEPS = {"xray": 256, "ecg": 16}
COMPLETENESS_RTOL = 0.05
COMPLETENESS_ATOL = 2e-5


@pytest.fixture(scope="module")
def phantom(tiny_phantom: Settings) -> Iterator[Store]:
    opened = Store.open(tiny_phantom, migrate=False)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def cases(phantom: Store) -> list[Case]:
    with phantom.session() as session:
        return load_cases(session, cohort=TINY_COHORT)


def build_model(
    cases: Sequence[Case], config: ModelConfig | None = None, seed: int = 0
) -> ClinicModel:
    """A tiny random model whose inputs are prepared as training would prepare them."""
    config = config or tiny_config()
    torch.manual_seed(seed)
    preprocess = fit_preprocess(config, cases)
    return ClinicModel(config, preprocess, common_label_names(cases)).eval()


def case_batch(
    model: ClinicModel, cases: Sequence[Case], store: Store, present: tuple[str, ...] = FULL
) -> dict[str, Tensor]:
    """The first case with exactly the modalities ``present``, collated alone (B == 1)."""
    index = next(i for i, case in enumerate(cases) if case.present == present)
    dataset = make_dataset(cases[index : index + 1], store, model, train=False)
    return make_collate(model.preprocess)([dataset[0]])


def model_logit(model: ClinicModel, batch: dict[str, Tensor], label: int) -> float:
    with torch.no_grad():
        return float(model(batch).logits[0, label])


def zeroed(batch: dict[str, Tensor], key: str) -> dict[str, Tensor]:
    return {**batch, key: torch.zeros_like(batch[key])}


def assert_complete(
    model: ClinicModel, batch: dict[str, Tensor], label: int, modality: str, attribution: Tensor
) -> None:
    """IG completeness: attributions sum to f(x) − f(zero input), others held fixed."""
    key = INPUT_KEY[modality]
    expected = model_logit(model, batch, label) - model_logit(model, zeroed(batch, key), label)
    assert abs(expected) > 1e-4  # the input matters, so the check below can fail
    total = float(attribution.sum())
    assert total == pytest.approx(expected, rel=COMPLETENESS_RTOL, abs=COMPLETENESS_ATOL)


@pytest.fixture(scope="module")
def model(cases: list[Case]) -> ClinicModel:
    return build_model(cases)


@pytest.fixture(scope="module")
def full_batch(model: ClinicModel, cases: list[Case], phantom: Store) -> dict[str, Tensor]:
    return case_batch(model, cases, phantom)


@pytest.fixture(scope="module")
def explained(model: ClinicModel, full_batch: dict[str, Tensor]) -> Explanation:
    return explain_case(model, full_batch, label_index=1)


# --- artifacts ---------------------------------------------------------------------------------


def test_artifacts_have_the_model_input_shapes(model: ClinicModel, explained: Explanation) -> None:
    size, window = model.preprocess.image_size, model.preprocess.ecg_window
    assert explained.label == model.label_names[1]
    saliency, ecg = explained.xray_saliency, explained.ecg_attribution
    assert saliency is not None and ecg is not None
    assert saliency.shape == (size, size) and saliency.dtype == np.float32
    assert saliency.min() >= 0.0 and saliency.max() == pytest.approx(1.0)
    assert np.count_nonzero(saliency) > size  # a map, not a single hot pixel
    assert ecg.shape == (12, window) and ecg.dtype == np.float32
    assert np.isfinite(ecg).all() and (ecg > 0).any() and (ecg < 0).any()  # signed


def test_report_words_are_the_report_in_order_without_special_tokens(
    model: ClinicModel, full_batch: dict[str, Tensor], explained: Explanation
) -> None:
    tokens = explained.report_tokens
    assert tokens
    words = [word for word, _ in tokens]
    tokenizer: Any = model.encoders["report"].tokenizer
    assert not set(words) & set(tokenizer.all_special_tokens)
    assert not any(word.startswith("##") for word in words)  # pieces were merged
    text = tokenizer.decode(full_batch["report_input_ids"][0], skip_special_tokens=True)
    assert "".join(words) == text.replace(" ", "")
    assert all(np.isfinite(value) for _, value in tokens)
    assert len({value for _, value in tokens}) > 1


def test_word_pieces_merge_into_words(model: ClinicModel) -> None:
    tokenizer: Any = model.encoders["report"].tokenizer
    encoded = tokenizer(["Cardiomegaly with pleural effusions."], return_tensors="pt")
    ids, mask = encoded["input_ids"][0], encoded["attention_mask"][0]
    pieces = tokenizer.convert_ids_to_tokens(ids.tolist())
    assert any(piece.startswith("##") for piece in pieces)  # the example does split words
    words = report_words(tokenizer, ids, mask)
    assert [w.text for w in words] == ["cardiomegaly", "with", "pleural", "effusions", "."]
    assert sorted(p for w in words for p in w.positions) == list(range(1, len(pieces) - 1))
    mask[3] = 0  # an unattended piece is left out
    assert all(3 not in w.positions for w in report_words(tokenizer, ids, mask))


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (("ecg", "record", "report"), {"ecg_attribution", "report_tokens"}),
        (("xray", "record"), {"xray_saliency"}),
        (("xray", "ecg", "record"), {"xray_saliency", "ecg_attribution"}),
    ],
)
def test_absent_modalities_get_no_artifact(
    model: ClinicModel,
    cases: list[Case],
    phantom: Store,
    present: tuple[str, ...],
    expected: set[str],
) -> None:
    explanation = explain_case(model, case_batch(model, cases, phantom, present), 0, steps=4)
    given = {key for key in ARTIFACT_KEYS if getattr(explanation, key) is not None}
    assert given == expected


def test_a_model_without_a_modality_gives_no_artifact_for_it(
    cases: list[Case], phantom: Store
) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    ecg_only = ClinicModel(config, fit_preprocess(config, cases), ("heart_failure",), ("ecg",))
    explanation = explain_case(ecg_only.eval(), case_batch(ecg_only, cases, phantom), 0, steps=4)
    assert explanation.ecg_attribution is not None
    assert explanation.xray_saliency is None and explanation.report_tokens is None


# --- integrated gradients ----------------------------------------------------------------------


def test_integrated_gradients_of_a_linear_function_are_exact() -> None:
    weights = torch.tensor([[1.5, -2.0, 0.25]])
    inputs = torch.tensor([[2.0, 1.0, -4.0]])
    attribution = integrated_gradients(lambda path: (path * weights).sum(dim=1), inputs, steps=3)
    torch.testing.assert_close(attribution, inputs * weights)


@pytest.mark.parametrize("modality", ["xray", "ecg"])
@pytest.mark.parametrize("label", [0, 3])
def test_attributions_sum_to_the_logit_change_from_a_zero_input(
    model: ClinicModel, full_batch: dict[str, Tensor], modality: str, label: int
) -> None:
    steps = COMPLETENESS_STEPS[modality]
    attribution = input_attribution(model, full_batch, label, modality, steps=steps)
    assert attribution.shape == full_batch[INPUT_KEY[modality]].shape
    assert_complete(model, full_batch, label, modality, attribution)


def test_the_ecg_artifact_is_the_signed_attribution(
    model: ClinicModel, full_batch: dict[str, Tensor], explained: Explanation
) -> None:
    attribution = input_attribution(model, full_batch, 1, "ecg")
    assert explained.ecg_attribution is not None
    np.testing.assert_allclose(explained.ecg_attribution, attribution[0].numpy(), atol=1e-7)


def test_absent_leads_get_zero_attribution_even_when_not_a_number(
    model: ClinicModel, full_batch: dict[str, Tensor]
) -> None:
    batch = {**full_batch, "ecg": full_batch["ecg"].clone()}
    batch["ecg_lead_mask"] = full_batch["ecg_lead_mask"].clone()
    batch["ecg_lead_mask"][0, [2, 7]] = False
    batch["ecg"][0, 2] = float("nan")
    attribution = explain_case(model, batch, 1).ecg_attribution
    assert attribution is not None and np.isfinite(attribution).all()
    assert not attribution[[2, 7]].any()
    assert np.count_nonzero(attribution[[0, 1, 3, 4, 5, 6, 8, 9, 10, 11]].any(axis=1)) == 10


def test_ecg_measurements_are_held_fixed_along_the_path(cases: list[Case], phantom: Store) -> None:
    config = tiny_config()
    torch.manual_seed(0)
    preprocess = fit_measurements(fit_preprocess(config, cases), cases, phantom)
    measured = ClinicModel(config, preprocess, common_label_names(cases)).eval()
    assert measured.measurements is not None
    batch = case_batch(measured, cases, phantom)
    assert_complete(measured, batch, 2, "ecg", input_attribution(measured, batch, 2, "ecg"))


# --- report occlusion --------------------------------------------------------------------------


def test_occluding_the_most_important_word_moves_the_logit_its_way(
    model: ClinicModel, full_batch: dict[str, Tensor], explained: Explanation
) -> None:
    tokens = explained.report_tokens
    assert tokens
    ids, mask = full_batch["report_input_ids"], full_batch["report_attention_mask"]
    words = report_words(model.encoders["report"].tokenizer, ids[0], mask[0])
    top = max(range(len(tokens)), key=lambda i: abs(tokens[i][1]))
    assert abs(tokens[top][1]) > 1e-4
    occluded = mask.clone()
    occluded[0, list(words[top].positions)] = 0
    with torch.no_grad():  # the report encoder itself: the model's cache keys ignore the mask
        embeddings = model.embed(full_batch)
        embeddings["report"] = model.encoders["report"](ids, occluded)
        logits = model.fuse(embeddings, model.present_masks(full_batch)).logits
    drop = model_logit(model, full_batch, 1) - float(logits[0, 1])
    assert np.sign(drop) == np.sign(tokens[top][1])
    assert drop == pytest.approx(tokens[top][1], abs=1e-5)


# --- the model is left alone -------------------------------------------------------------------


def module_modes(model: ClinicModel) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


@pytest.mark.parametrize("training", [False, True])
def test_the_model_is_left_as_it_was_found(
    cases: list[Case], phantom: Store, explained: Explanation, training: bool
) -> None:
    model = build_model(cases).train(training)  # same seed as the shared model
    batch = case_batch(model, cases, phantom)
    modes, state = module_modes(model), {k: v.clone() for k, v in model.state_dict().items()}
    assert not all(modes.values()) if training else not any(modes.values())
    explanation = explain_case(model, batch, label_index=1)
    assert module_modes(model) == modes
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0.0, atol=0.0, msg=key)
    assert len(model.feature_cache) == 0 and model.feature_cache.misses == 0
    assert_same(explanation, explained)  # explained in eval mode even when handed in training


def assert_same(first: Explanation, second: Explanation) -> None:
    assert first.label == second.label
    for key in ("xray_saliency", "ecg_attribution"):
        a, b = getattr(first, key), getattr(second, key)
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert first.report_tokens == second.report_tokens


def test_explanations_are_deterministic(
    model: ClinicModel, full_batch: dict[str, Tensor], explained: Explanation
) -> None:
    assert_same(explain_case(model, full_batch, label_index=1), explained)


def test_callers_in_inference_mode_get_the_same_explanation(
    model: ClinicModel, full_batch: dict[str, Tensor], explained: Explanation
) -> None:
    with torch.inference_mode():
        batch = {key: value.clone() for key, value in full_batch.items()}
        explanation = explain_case(model, batch, label_index=1)
    assert_same(explanation, explained)


def test_a_frozen_xray_backbone_is_explained_around_its_feature_cache(
    cases: list[Case], phantom: Store
) -> None:
    config = tiny_config()
    config = dataclasses.replace(
        config, xray=dataclasses.replace(config.xray, freeze_backbone=True, backbone="small-cnn")
    )
    model = build_model(cases, config)
    assert model._backbone_frozen("xray")
    batch = case_batch(model, cases, phantom)
    explanation = explain_case(model, batch, label_index=2)
    cache = model.feature_cache
    assert (len(cache), cache.hits, cache.misses) == (0, 0, 0)
    assert all(p.grad is None for p in model.parameters())
    assert explanation.xray_saliency is not None and explanation.xray_saliency.max() == 1.0
    attribution = input_attribution(model, batch, 2, "xray", steps=COMPLETENESS_STEPS["xray"])
    assert_complete(model, batch, 2, "xray", attribution)


# --- requests and artifacts --------------------------------------------------------------------


def test_bad_requests_are_refused(model: ClinicModel, full_batch: dict[str, Tensor]) -> None:
    with pytest.raises(IndexError):
        explain_case(model, full_batch, len(model.label_names))
    with pytest.raises(ValueError, match="steps"):
        explain_case(model, full_batch, 0, steps=0)
    two = {key: torch.cat([value, value]) for key, value in full_batch.items()}
    with pytest.raises(ValueError, match="one case"):
        explain_case(model, two, 0)
    with pytest.raises(ValueError, match="report"):
        input_attribution(model, full_batch, 0, "report")
    with pytest.raises(ValueError, match="no xray"):
        input_attribution(model, zeroed(full_batch, "present_xray"), 0, "xray")


def test_artifacts_round_trip_through_bytes(explained: Explanation) -> None:
    parts = encode_artifact(explained)
    assert set(parts) == set(ARTIFACT_KEYS)
    assert explained.xray_saliency is not None
    np.testing.assert_array_equal(decode_array(parts["xray_saliency"]), explained.xray_saliency)
    words = json.loads(parts["report_tokens"].decode("utf-8"))
    assert [w["token"] for w in words] == [t for t, _ in explained.report_tokens or []]
    assert_same(decode_artifact(parts, explained.label), explained)
    partial = dataclasses.replace(explained, xray_saliency=None, report_tokens=None)
    assert set(encode_artifact(partial)) == {"ecg_attribution"}
    with pytest.raises(ValueError, match="unknown"):
        decode_artifact({**parts, "heatmap": b""}, explained.label)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_explanations_match_the_cpu_ones(
    cases: list[Case], phantom: Store, explained: Explanation
) -> None:
    model = build_model(cases).to("cuda")
    batch = {key: value.to("cuda") for key, value in case_batch(model, cases, phantom).items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):  # a caller's autocast is switched off
        explanation = explain_case(model, batch, label_index=1)
    assert all(p.grad is None for p in model.parameters())
    for key in ("xray_saliency", "ecg_attribution"):
        np.testing.assert_allclose(
            getattr(explanation, key), getattr(explained, key), rtol=1e-3, atol=1e-4
        )
    ours, theirs = explanation.report_tokens or [], explained.report_tokens or []
    assert [t for t, _ in ours] == [t for t, _ in theirs]
    np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], atol=1e-4)

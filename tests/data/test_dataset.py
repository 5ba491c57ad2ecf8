"""CaseDataset and collation: items carry only the modalities a case has, batches zero-fill the
rest and say which rows are present; the preprocessing config round-trips and hashes by content.

Dataset items are built from the tiny phantom store (opened read-only); the collation and config
tests use in-code items.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Hashable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

from clinic.data.cases import Case, common_label_names, load_cases
from clinic.data.dataset import (
    CaseDataset,
    PreprocessConfig,
    collate_cases,
    input_shapes,
    make_collate,
)
from clinic.data.records import RecordNormalizer
from clinic.ingest.types import STANDARD_LEADS
from clinic.settings import Settings
from clinic.store.store import Store
from schemas.modalities import MODALITIES
from tests.modelkit import TINY_COHORT

MAX_TOKENS = 12
PRESENCE_KEYS = {"xray": "xray", "ecg": "ecg", "record": "record", "report": "report_input_ids"}
MODALITY_KEYS = {
    "xray": {"xray"},
    "ecg": {"ecg", "ecg_lead_mask"},
    "record": {"record", "record_missing"},
    "report": {"report", "report_input_ids", "report_attention_mask"},
}


def word_tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """A stand-in tokenizer: one id per word, padded / truncated to MAX_TOKENS."""
    ids = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.int64)
    for row, text in enumerate(texts):
        words = [len(word) for word in text.split()][:MAX_TOKENS]
        ids[row, : len(words)] = torch.tensor(words)
    return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def small_preprocess(record: RecordNormalizer | None) -> PreprocessConfig:
    return PreprocessConfig(
        image_size=16, ecg_rate_hz=50, ecg_window=60, text_max_length=MAX_TOKENS, record=record
    )


@pytest.fixture(scope="module")
def phantom(tiny_phantom: Settings) -> Iterator[Store]:
    opened = Store.open(tiny_phantom, migrate=False)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def cases(phantom: Store) -> list[Case]:
    with phantom.session() as session:
        return load_cases(session, cohort=TINY_COHORT)


@pytest.fixture(scope="module")
def preprocess(cases: list[Case]) -> PreprocessConfig:
    records = [case.record for case in cases if case.record is not None]
    return small_preprocess(RecordNormalizer.fit(records))


@pytest.fixture(scope="module")
def dataset(cases: list[Case], phantom: Store, preprocess: PreprocessConfig) -> CaseDataset:
    names = common_label_names(cases)
    built = CaseDataset(cases, phantom.blobs, preprocess, label_names=names, tokenize=word_tokenize)
    built.warm()
    return built


def present_in(item: dict[Hashable, Any]) -> tuple[str, ...]:
    return tuple(m for m in MODALITIES if PRESENCE_KEYS[m] in item)


# --- items -----------------------------------------------------------------------------------


def test_items_contain_only_the_modalities_the_case_has(
    dataset: CaseDataset, cases: list[Case]
) -> None:
    assert len(dataset) == len(cases)
    assert len({case.present for case in cases}) > 1  # the phantom mixes subsets
    for index, case in enumerate(cases):
        item = dataset[index]
        assert present_in(item) == case.present
        expected = {"index", "labels"}.union(*(MODALITY_KEYS[m] for m in case.present))
        assert set(item) == expected, case.present


def test_item_shapes_follow_the_preprocess_config(
    dataset: CaseDataset, cases: list[Case], preprocess: PreprocessConfig
) -> None:
    shapes = input_shapes(preprocess)
    for index, case in enumerate(cases):
        item = dataset[index]
        assert item["index"] == index
        assert item["labels"].shape == (len(dataset.label_names),)
        for key, shape in shapes.items():
            if key in item:
                assert np.asarray(item[key]).shape == shape, key
        if "ecg" in case.present:
            assert item["ecg"].dtype == np.float32
            assert item["ecg_lead_mask"].tolist() == [
                lead in case.ecg_leads for lead in STANDARD_LEADS
            ]
        if "xray" in case.present:
            assert item["xray"].min() >= 0.0 and item["xray"].max() <= 1.0


def test_labels_follow_the_label_names(dataset: CaseDataset, cases: list[Case]) -> None:
    for index, case in enumerate(cases):
        expected = [case.labels.get(name, np.nan) for name in dataset.label_names]
        np.testing.assert_array_equal(dataset[index]["labels"], np.array(expected, np.float32))


def test_without_normalizer_or_tokenizer_records_and_reports_are_left_out(
    cases: list[Case], phantom: Store
) -> None:
    bare = CaseDataset(cases[:4], phantom.blobs, small_preprocess(None), label_names=["x"])
    for index, case in enumerate(cases[:4]):
        item = bare[index]
        assert present_in(item) == tuple(m for m in case.present if m in ("xray", "ecg"))


def test_training_items_are_reproducible_per_seed(
    cases: list[Case], phantom: Store, preprocess: PreprocessConfig
) -> None:
    with_ecg = [case for case in cases if case.ecg_blob is not None][:3]

    def ecg_windows(seed: int) -> list[np.ndarray[Any, Any]]:
        data = CaseDataset(
            with_ecg, phantom.blobs, preprocess, label_names=["x"], train=True, seed=seed
        )
        return [data[i]["ecg"] for i in range(len(data)) for _ in range(2)]

    first, again, other = ecg_windows(3), ecg_windows(3), ecg_windows(4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_evaluation_items_are_identical_on_every_read(dataset: CaseDataset) -> None:
    first, second = dataset[0], dataset[0]
    for key in first:
        np.testing.assert_array_equal(np.asarray(first[key]), np.asarray(second[key]))


# --- collation -------------------------------------------------------------------------------


def test_collate_zero_fills_absent_modalities_and_sets_masks(
    dataset: CaseDataset, cases: list[Case], preprocess: PreprocessConfig
) -> None:
    chosen = [next(i for i, c in enumerate(cases) if c.present == p)
              for p in sorted({c.present for c in cases})]  # fmt: skip
    batch = make_collate(preprocess)([dataset[i] for i in chosen])
    assert batch["index"].tolist() == chosen
    for modality in MODALITIES:
        mask = batch[f"present_{modality}"]
        assert mask.dtype == torch.bool
        assert mask.tolist() == [modality in cases[i].present for i in chosen]
    for key, shape in input_shapes(preprocess).items():
        assert tuple(batch[key].shape) == (len(chosen), *shape), key
    for row, index in enumerate(chosen):
        if "xray" not in cases[index].present:
            assert not batch["xray"][row].any()
        if "ecg" not in cases[index].present:
            assert not batch["ecg"][row].any() and not batch["ecg_lead_mask"][row].any()
        if "report" not in cases[index].present:
            assert not batch["report_input_ids"][row].any()
    assert batch["report_input_ids"].dtype == torch.int64
    assert batch["ecg_lead_mask"].dtype == torch.bool
    assert batch["xray"].dtype == torch.float32


def tiny_shapes() -> dict[str, tuple[int, ...]]:
    return {"xray": (1, 2, 2), "record": (3,), "report_input_ids": (4,)}


def test_collate_keeps_values_and_zero_fills_in_code() -> None:
    items: list[dict[Hashable, Any]] = [
        {"index": 0, "labels": np.array([1.0, np.nan], dtype=np.float32),
         "xray": np.ones((1, 2, 2)), "report_input_ids": np.array([5, 6, 0, 0])},
        {"index": 1, "labels": np.array([0.0, 1.0], dtype=np.float32),
         "record": np.array([0.5, -1.0, 2.0])},
    ]  # fmt: skip
    batch = collate_cases(items, tiny_shapes())
    assert batch["present_xray"].tolist() == [True, False]
    assert batch["present_record"].tolist() == [False, True]
    assert batch["present_report"].tolist() == [True, False]
    assert batch["present_ecg"].tolist() == [False, False]
    assert batch["xray"][0].sum() == 4 and batch["xray"][1].sum() == 0
    assert batch["record"].tolist() == [[0.0, 0.0, 0.0], [0.5, -1.0, 2.0]]
    assert batch["report_input_ids"].tolist() == [[5, 6, 0, 0], [0, 0, 0, 0]]
    assert torch.isnan(batch["labels"][0, 1])


def test_collate_rejects_a_wrongly_shaped_input() -> None:
    items: list[dict[Hashable, Any]] = [
        {"index": 0, "labels": np.zeros(1, dtype=np.float32), "record": np.zeros(4)}
    ]
    with pytest.raises(ValueError, match="record"):
        collate_cases(items, tiny_shapes())


def test_input_shapes_follow_the_config() -> None:
    record = RecordNormalizer(("a", "b", "c"), (0.0,) * 3, (1.0,) * 3)
    measurements = RecordNormalizer(("qt", "pr"), (0.0,) * 2, (1.0,) * 2)
    config = dataclasses.replace(small_preprocess(record), measurements=measurements)
    shapes = input_shapes(config)
    assert shapes["xray"] == (1, 16, 16)
    assert shapes["ecg"] == (len(STANDARD_LEADS), 60)
    assert shapes["record"] == shapes["record_missing"] == (3,)
    assert shapes["ecg_measurements"] == (2,)
    assert shapes["report_input_ids"] == (MAX_TOKENS,)


# --- PreprocessConfig ------------------------------------------------------------------------


def full_config() -> PreprocessConfig:
    return PreprocessConfig(
        image_size=64,
        ecg_rate_hz=100,
        ecg_window=250,
        record=RecordNormalizer(("age_years", "bnp_pg_ml"), (60.0, 5.5), (12.0, 1.5)),
        measurements=RecordNormalizer(("qrs_ms",), (95.0,), (15.0,)),
    )


def test_preprocess_config_json_round_trip() -> None:
    config = full_config()
    restored = PreprocessConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert restored == config
    assert restored.content_hash() == config.content_hash()
    bare = PreprocessConfig()
    assert PreprocessConfig.from_json(json.loads(json.dumps(bare.to_json()))) == bare


@pytest.mark.parametrize(
    "change",
    [
        {"image_size": 65},
        {"ecg_rate_hz": 250},
        {"ecg_window": 251},
        {"ecg_low_hz": 0.67},
        {"ecg_high_hz": 35.0},
        {"text_max_length": 64},
        {"augment_images": False},
        {"record": RecordNormalizer(("age_years", "bnp_pg_ml"), (60.0, 5.5), (12.0, 1.6))},
        {"record": None},
        {"measurements": None},
    ],
    ids=lambda change: next(iter(change)),
)
def test_content_hash_changes_when_a_field_changes(change: dict[str, Any]) -> None:
    config = full_config()
    assert config.content_hash() == full_config().content_hash()
    assert dataclasses.replace(config, **change).content_hash() != config.content_hash()

"""A torch dataset over store cases: any subset of modalities, a presence mask, labels by name.

Each item is a dict with only the modalities the case has; :func:`collate_cases` zero-fills the
absent ones and adds ``present_<modality>`` masks, so one batch mixes cases with different
subsets. Deterministic preprocessing runs once per case and is cached; augmentation runs per
item in training mode only. The :class:`PreprocessConfig` is what a model stores to reproduce
its inputs exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.compose import Compose
from monai.transforms.intensity.dictionary import RandAdjustContrastd
from monai.transforms.spatial.dictionary import RandAffined
from torch.utils.data import Dataset

from clinic.data.cases import Case, label_matrix
from clinic.data.records import RecordNormalizer
from clinic.data.transforms import (
    BandPassd,
    CenterCropSignald,
    NormalizeRecordd,
    PrepareImaged,
    RandCropSignald,
    ScaleSignald,
    Tokenized,
    resample_signal,
)
from clinic.ingest.types import STANDARD_LEADS
from clinic.store.blobs import BlobStore, decode_unit_image
from schemas.modalities import MODALITIES

Tokenize = Callable[[list[str]], Mapping[str, torch.Tensor]]
MeasureEcg = Callable[[npt.NDArray[np.float32], float], npt.NDArray[np.float32]]
Item = dict[Hashable, Any]


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns stored blobs into model inputs; hashed into every prediction."""

    image_size: int = 128
    ecg_rate_hz: int = 100
    ecg_window: int = 250
    ecg_low_hz: float = 0.5
    ecg_high_hz: float = 40.0
    text_max_length: int = 128
    augment_images: bool = True
    record: RecordNormalizer | None = None
    measurements: RecordNormalizer | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["record"] = self.record.to_json() if self.record else None
        data["measurements"] = self.measurements.to_json() if self.measurements else None
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreprocessConfig:
        values = dict(data)
        for key in ("record", "measurements"):
            values[key] = RecordNormalizer.from_json(values[key]) if values.get(key) else None
        return cls(**values)

    def content_hash(self) -> str:
        encoded = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(encoded.encode()).hexdigest()

    @property
    def n_record_features(self) -> int:
        return len(self.record.features) if self.record else 0

    @property
    def n_measurements(self) -> int:
        return len(self.measurements.features) if self.measurements else 0


class CaseDataset(Dataset[Item]):
    """Cases → model-ready dicts; the preprocessed form of each case is computed once."""

    def __init__(
        self,
        cases: Sequence[Case],
        blobs: BlobStore,
        preprocess: PreprocessConfig,
        *,
        label_names: Sequence[str],
        tokenize: Tokenize | None = None,
        measure_ecg: MeasureEcg | None = None,
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.cases, self.blobs, self.preprocess = list(cases), blobs, preprocess
        self.label_names = tuple(label_names)
        self.labels = label_matrix(self.cases, self.label_names)
        self.tokenize, self.measure_ecg, self.train = tokenize, measure_ecg, train
        self._cache: dict[int, Item] = {}
        self._random = self._random_transforms(train, seed)
        self._fixed = self._fixed_transforms()

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> Item:
        if index not in self._cache:
            self._cache[index] = self._prepare(index)
        item = dict(self._cache[index])
        return dict(self._random(item))

    def warm(self) -> None:
        """Preprocess every case now (e.g. before timing or before forking loaders)."""
        for index in range(len(self)):
            if index not in self._cache:
                self._cache[index] = self._prepare(index)

    def _prepare(self, index: int) -> Item:
        case = self.cases[index]
        item: Item = {"index": index, "labels": self.labels[index]}
        if case.xray_blob is not None:
            item["xray"] = decode_unit_image(self.blobs.get_array(case.xray_blob))
        if case.ecg_blob is not None:
            self._load_ecg(case, item)
        if case.record is not None and self.preprocess.record is not None:
            item["record"] = case.record
        if case.report and self.tokenize is not None:
            item["report"] = case.report
        return dict(self._fixed(item))

    def _load_ecg(self, case: Case, item: Item) -> None:
        signal = np.asarray(self.blobs.get_array(case.ecg_blob or ""), dtype=np.float32)
        item["ecg_lead_mask"] = np.array([lead in case.ecg_leads for lead in STANDARD_LEADS])
        if self.measure_ecg is not None and self.preprocess.measurements is not None:
            measured = self.measure_ecg(signal, float(case.ecg_rate_hz))
            names = self.preprocess.measurements.features
            if len(measured) != len(names):
                raise ValueError(
                    f"the ECG measurement gives {len(measured)} features but this model was "
                    f"trained on {len(names)}: retrain it with this version of clinic"
                )
            values, missing = self.preprocess.measurements.transform(
                dict(zip(names, measured.tolist(), strict=True))
            )
            item["ecg_measurements"], item["ecg_measurements_missing"] = values, missing
        item["ecg"] = resample_signal(signal, case.ecg_rate_hz, self.preprocess.ecg_rate_hz)

    def _fixed_transforms(self) -> Compose:
        p = self.preprocess
        steps: list[Callable[[Item], Item]] = [
            PrepareImaged("xray", p.image_size),
            BandPassd("ecg", p.ecg_rate_hz, p.ecg_low_hz, p.ecg_high_hz),
            ScaleSignald("ecg"),
        ]
        if p.record is not None:
            steps.append(NormalizeRecordd("record", p.record))
        if self.tokenize is not None:
            steps.append(Tokenized("report", self.tokenize))
        return Compose(steps)

    def _random_transforms(self, train: bool, seed: int) -> Compose:
        p = self.preprocess
        if not train:
            return Compose([CenterCropSignald("ecg", p.ecg_window)])
        steps: list[Any] = [RandCropSignald("ecg", p.ecg_window)]
        if p.augment_images:
            steps += [
                RandAffined(
                    "xray",
                    prob=0.5,
                    rotate_range=0.08,
                    scale_range=0.08,
                    translate_range=(4, 4),
                    padding_mode="zeros",
                    allow_missing_keys=True,
                ),
                RandAdjustContrastd("xray", prob=0.3, gamma=(0.8, 1.25), allow_missing_keys=True),
            ]
        return Compose(steps).set_random_state(seed)


def input_shapes(preprocess: PreprocessConfig) -> dict[str, tuple[int, ...]]:
    """Shape of every per-case input tensor, used to zero-fill absent modalities in a batch."""
    p = preprocess
    return {
        "xray": (1, p.image_size, p.image_size),
        "ecg": (len(STANDARD_LEADS), p.ecg_window),
        "ecg_lead_mask": (len(STANDARD_LEADS),),
        "ecg_measurements": (p.n_measurements,),
        "ecg_measurements_missing": (p.n_measurements,),
        "record": (p.n_record_features,),
        "record_missing": (p.n_record_features,),
        "report_input_ids": (p.text_max_length,),
        "report_attention_mask": (p.text_max_length,),
    }


_PRESENCE_KEY = {"xray": "xray", "ecg": "ecg", "record": "record", "report": "report_input_ids"}
_INTEGER_KEYS = {"report_input_ids", "report_attention_mask"}


def make_collate(
    preprocess: PreprocessConfig,
) -> Callable[[Sequence[Item]], dict[str, torch.Tensor]]:
    """A collate function closing over the input shapes of ``preprocess``."""
    shapes = input_shapes(preprocess)

    def collate(items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return collate_cases(items, shapes)

    return collate


def collate_cases(
    items: Sequence[Item], shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """Stack items into tensors; absent inputs are zeros and ``present_<m>`` says which rows."""
    batch: dict[str, torch.Tensor] = {
        "index": torch.tensor([int(item["index"]) for item in items]),
        "labels": torch.from_numpy(np.stack([item["labels"] for item in items])),
    }
    for modality in MODALITIES:
        key = _PRESENCE_KEY[modality]
        batch[f"present_{modality}"] = torch.tensor([key in item for item in items])
    for key, shape in shapes.items():
        dtype: type = np.int64 if key in _INTEGER_KEYS else np.float32
        if key == "ecg_lead_mask":
            dtype = np.bool_
        stacked = np.stack([_value_or_zeros(item, key, shape, dtype) for item in items])
        batch[key] = torch.from_numpy(stacked)
    return batch


def _value_or_zeros(
    item: Mapping[Hashable, Any], key: str, shape: tuple[int, ...], dtype: type
) -> npt.NDArray[Any]:
    value = item.get(key)
    if value is None:
        return np.zeros(shape, dtype=dtype)
    array: npt.NDArray[Any] = np.asarray(value, dtype=dtype)
    if array.shape != shape:
        raise ValueError(f"input {key!r} has shape {array.shape}, expected {shape}")
    return array

"""Dictionary transforms in the MONAI style: each acts on the keys a case has, skips the rest.

A case is ``{"xray", "ecg", "record", "report", ...}`` with any key absent, so every transform
here is a :class:`monai.transforms.MapTransform` built with ``allow_missing_keys=True``. The
deterministic ones (resize, filtering, resampling, normalisation, tokenisation) run once per case
and are cached by the dataset; the random ones (augmentation, crops) run per epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from monai.transforms.transform import MapTransform, RandomizableTransform
from scipy.signal import butter, resample_poly, sosfiltfilt

from clinic.data.records import RecordNormalizer

FloatArray = npt.NDArray[np.float32]
Case = dict[Hashable, Any]


class PrepareImaged(MapTransform):
    """Window a [0, 1] radiograph to its 1st–99th percentile and resize to ``size`` × ``size``.

    Percentile windowing evens out exposure differences between sites before the network sees
    the image; area interpolation avoids aliasing when shrinking 2,000-px films.
    """

    def __init__(self, keys: str, size: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.size = size

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = prepare_image(np.asarray(out[key], dtype=np.float32), self.size)
        return out


def prepare_image(image: FloatArray, size: int) -> FloatArray:
    """(H, W) or (1, H, W) → (1, size, size) float32 in [0, 1]."""
    plane = image.reshape(image.shape[-2], image.shape[-1])
    low, high = np.percentile(plane, [1.0, 99.0])
    scaled = np.clip((plane - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    tensor = torch.from_numpy(np.ascontiguousarray(scaled, dtype=np.float32))[None, None]
    resized = torch.nn.functional.interpolate(tensor, size=(size, size), mode="area")
    return resized[0].numpy()


class ResampleSignald(MapTransform):
    """Resample (leads, T) signals from ``source_hz`` to ``target_hz`` (polyphase, anti-aliased)."""

    def __init__(self, keys: str, source_hz: int, target_hz: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.source_hz, self.target_hz = source_hz, target_hz

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = resample_signal(out[key], self.source_hz, self.target_hz)
        return out


def resample_signal(signal: FloatArray, source_hz: int, target_hz: int) -> FloatArray:
    if source_hz == target_hz:
        return np.asarray(signal, dtype=np.float32)
    divisor = np.gcd(source_hz, target_hz)
    resampled = resample_poly(signal, target_hz // divisor, source_hz // divisor, axis=-1)
    return np.asarray(resampled, dtype=np.float32)


class BandPassd(MapTransform):
    """Zero-phase Butterworth band-pass: removes baseline wander (< ``low_hz``) and mains/EMG
    noise (> ``high_hz``) without shifting the waves in time."""

    def __init__(self, keys: str, rate_hz: int, low_hz: float = 0.5, high_hz: float = 40.0) -> None:
        super().__init__(keys, allow_missing_keys=True)
        nyquist = rate_hz / 2.0
        high = min(high_hz, 0.45 * rate_hz)
        self.sos = butter(2, [low_hz / nyquist, high / nyquist], btype="bandpass", output="sos")

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            filtered = sosfiltfilt(self.sos, np.asarray(out[key], dtype=np.float64), axis=-1)
            out[key] = filtered.astype(np.float32)
        return out


class ScaleSignald(MapTransform):
    """Divide by a fixed scale (mV) and clip, so amplitudes stay comparable across cases."""

    def __init__(self, keys: str, scale_mv: float = 1.0, clip: float = 10.0) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.scale_mv, self.clip = scale_mv, clip

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = np.clip(np.asarray(out[key]) / self.scale_mv, -self.clip, self.clip).astype(
                np.float32
            )
        return out


class RandCropSignald(RandomizableTransform, MapTransform):
    """A random window of ``length`` samples (the same offset for every key of one case)."""

    def __init__(self, keys: str, length: int) -> None:
        RandomizableTransform.__init__(self, prob=1.0)
        MapTransform.__init__(self, keys, allow_missing_keys=True)
        self.length = length

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        start: int | None = None
        for key in self.key_iterator(out):
            signal = out[key]
            spare = max(signal.shape[-1] - self.length, 0)
            if start is None:
                start = int(self.R.randint(0, spare + 1)) if spare > 0 else 0
            offset = min(start, spare)
            out[key] = fit_length(signal[..., offset : offset + self.length], self.length)
        return out


class CenterCropSignald(MapTransform):
    """The central window of ``length`` samples (zero-padded when the signal is shorter)."""

    def __init__(self, keys: str, length: int) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.length = length

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            signal = out[key]
            start = max(0, (signal.shape[-1] - self.length) // 2)
            out[key] = fit_length(signal[..., start : start + self.length], self.length)
        return out


def fit_length(signal: FloatArray, length: int) -> FloatArray:
    """Zero-pad on the right to exactly ``length`` samples."""
    if signal.shape[-1] >= length:
        return np.ascontiguousarray(signal[..., :length])
    pad = [(0, 0)] * (signal.ndim - 1) + [(0, length - signal.shape[-1])]
    return np.pad(signal, pad).astype(np.float32)


class NormalizeRecordd(MapTransform):
    """Record mapping → standardised values; missingness goes to ``<key>_missing``."""

    def __init__(self, keys: str, normalizer: RecordNormalizer) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.normalizer = normalizer

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            values, missing = self.normalizer.transform(out[key])
            out[key], out[f"{key}_missing"] = values, missing
        return out


class Tokenized(MapTransform):
    """Report text → ``<key>_input_ids`` / ``<key>_attention_mask`` (fixed length, int64)."""

    def __init__(
        self, keys: str, tokenize: Callable[[list[str]], Mapping[str, torch.Tensor]]
    ) -> None:
        super().__init__(keys, allow_missing_keys=True)
        self.tokenize = tokenize

    def __call__(self, data: Mapping[Hashable, Any]) -> Case:
        out = dict(data)
        for key in self.key_iterator(out):
            tokens = self.tokenize([str(out[key])])
            out[f"{key}_input_ids"] = tokens["input_ids"][0].numpy().astype(np.int64)
            out[f"{key}_attention_mask"] = tokens["attention_mask"][0].numpy().astype(np.int64)
        return out

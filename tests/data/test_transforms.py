"""Dictionary transforms: absent keys skipped, output shapes, filtering, resampling, crops,
record normalisation and tokenisation."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from monai.transforms.transform import MapTransform

from clinic.data.records import RecordNormalizer
from clinic.data.transforms import (
    BandPassd,
    CenterCropSignald,
    NormalizeRecordd,
    PrepareImaged,
    RandCropSignald,
    ResampleSignald,
    ScaleSignald,
    Tokenized,
    fit_length,
    prepare_image,
    resample_signal,
)

FloatArray = npt.NDArray[np.float32]
RATE = 100
MAX_TOKENS = 8


def sine(frequency_hz: float, seconds: float, rate_hz: int = RATE) -> FloatArray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return np.sin(2 * np.pi * frequency_hz * t).astype(np.float32)


def ramp(leads: int, samples: int) -> FloatArray:
    """(leads, samples) whose value is its sample index: a crop's offset is its first value."""
    return np.tile(np.arange(samples, dtype=np.float32), (leads, 1))


def word_tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
    """A stand-in tokenizer: one id per word (its length), padded / truncated to MAX_TOKENS."""
    ids = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.int32)
    mask = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.int32)
    for row, text in enumerate(texts):
        words = [len(word) for word in text.split()][:MAX_TOKENS]
        ids[row, : len(words)] = torch.tensor(words, dtype=torch.int32)
        mask[row, : len(words)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def every_transform() -> list[MapTransform]:
    normalizer = RecordNormalizer(("age_years",), (50.0,), (10.0,))
    return [
        PrepareImaged("xray", 16),
        ResampleSignald("ecg", 500, 100),
        BandPassd("ecg", RATE),
        ScaleSignald("ecg"),
        RandCropSignald("ecg", 10),
        CenterCropSignald("ecg", 10),
        NormalizeRecordd("record", normalizer),
        Tokenized("report", word_tokenize),
    ]


@pytest.mark.parametrize("transform", every_transform(), ids=lambda t: type(t).__name__)
def test_every_transform_skips_absent_keys(transform: MapTransform) -> None:
    assert transform.allow_missing_keys
    case: dict[Hashable, Any] = {"index": 3, "labels": np.zeros(2, dtype=np.float32)}
    out = transform(case)
    assert set(out) == {"index", "labels"}
    assert out["index"] == 3
    assert out is not case


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 56), (1, 40, 56)])
def test_prepare_image_gives_one_square_channel_in_unit_range(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).uniform(0.2, 0.4, size=shape).astype(np.float32)
    out = PrepareImaged("xray", 16)({"xray": image})["xray"]
    assert out.shape == (1, 16, 16)
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_prepare_image_windows_to_percentiles() -> None:
    """A dim image with one blinding pixel still fills [0, 1] after windowing."""
    image = np.tile(np.linspace(0.1, 0.2, 64, dtype=np.float32), (64, 1))
    image[0, 0] = 1.0
    out = prepare_image(image, 64)
    assert out[0, 0, 0] == 1.0
    np.testing.assert_allclose(out[0, 1:, 0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[0, 1:, -1], 1.0, atol=1e-6)


# --- signals ---------------------------------------------------------------------------------


def test_band_pass_removes_baseline_wander_and_keeps_ten_hertz() -> None:
    wander, beat = 2.0 * sine(0.1, 60.0), sine(10.0, 60.0)
    signal = np.stack([wander + beat, wander])  # (2, T)
    out = BandPassd("ecg", RATE)({"ecg": signal})["ecg"]
    middle = slice(1000, 5000)  # away from the edges, where filtfilt's padding acts
    assert out.shape == signal.shape and out.dtype == np.float32
    assert np.abs(out[1, middle]).max() < 0.05 * np.abs(wander).max()
    np.testing.assert_allclose(out[0, middle], beat[middle], atol=0.05)


def test_band_pass_cuts_high_frequency_noise() -> None:
    noise = sine(45.0, 20.0)
    out = BandPassd("ecg", RATE, high_hz=20.0)({"ecg": noise[None]})["ecg"]
    assert np.abs(out[0, 200:-200]).max() < 0.1


@pytest.mark.parametrize(("source", "target"), [(500, 100), (250, 100), (100, 500), (360, 100)])
def test_resample_changes_length_by_the_rate_ratio(source: int, target: int) -> None:
    signal = np.zeros((12, 10 * source), dtype=np.float32)
    out = ResampleSignald("ecg", source, target)({"ecg": signal})["ecg"]
    assert out.shape == (12, 10 * target)
    assert out.dtype == np.float32


def test_resample_keeps_the_waveform() -> None:
    high = sine(5.0, 4.0, rate_hz=500)
    low = resample_signal(high[None], 500, 100)[0]
    np.testing.assert_allclose(low[20:-20], sine(5.0, 4.0, rate_hz=100)[20:-20], atol=0.02)


def test_resample_to_the_same_rate_is_the_identity() -> None:
    signal = ramp(2, 30)
    np.testing.assert_array_equal(resample_signal(signal, 100, 100), signal)


def test_scale_divides_and_clips() -> None:
    signal = np.array([[0.5, -4.0, 30.0, -30.0]], dtype=np.float32)
    out = ScaleSignald("ecg", scale_mv=2.0, clip=10.0)({"ecg": signal})["ecg"]
    np.testing.assert_allclose(out, [[0.25, -2.0, 10.0, -10.0]])
    assert out.dtype == np.float32


def crop_offsets(seed: int, draws: int, samples: int = 100, length: int = 30) -> list[int]:
    crop = RandCropSignald("ecg", length)
    crop.set_random_state(seed)
    offsets = []
    for _ in range(draws):
        window = crop({"ecg": ramp(3, samples)})["ecg"]
        assert window.shape == (3, length)
        np.testing.assert_array_equal(window[0], np.arange(window[0, 0], window[0, 0] + length))
        offsets.append(int(window[0, 0]))
    return offsets


def test_random_crop_is_deterministic_per_seed() -> None:
    assert crop_offsets(seed=5, draws=20) == crop_offsets(seed=5, draws=20)
    assert crop_offsets(seed=5, draws=20) != crop_offsets(seed=6, draws=20)


def test_random_crop_stays_within_the_signal() -> None:
    offsets = crop_offsets(seed=0, draws=300, samples=40, length=30)
    assert min(offsets) >= 0 and max(offsets) <= 10
    assert len(set(offsets)) > 5  # it does move


def test_random_crop_uses_one_offset_for_every_key_of_a_case() -> None:
    crop = RandCropSignald(["ecg", "ecg_copy"], 10)  # type: ignore[arg-type]
    crop.set_random_state(1)
    for _ in range(10):
        out = crop({"ecg": ramp(1, 80), "ecg_copy": ramp(2, 80)})
        np.testing.assert_array_equal(out["ecg"][0], out["ecg_copy"][1])


def test_random_crop_pads_short_signals() -> None:
    out = RandCropSignald("ecg", 10)({"ecg": ramp(2, 6)})["ecg"]
    np.testing.assert_array_equal(out[1], [0, 1, 2, 3, 4, 5, 0, 0, 0, 0])


def test_center_crop_takes_the_middle() -> None:
    out = CenterCropSignald("ecg", 4)({"ecg": ramp(2, 10)})["ecg"]
    np.testing.assert_array_equal(out, [[3, 4, 5, 6], [3, 4, 5, 6]])


def test_center_crop_pads_short_signals_on_the_right() -> None:
    out = CenterCropSignald("ecg", 6)({"ecg": ramp(2, 4)})["ecg"]
    assert out.shape == (2, 6)
    np.testing.assert_array_equal(out[0], [0, 1, 2, 3, 0, 0])


def test_fit_length_pads_and_truncates() -> None:
    padded = fit_length(ramp(1, 3).astype(np.float64), 5)
    assert padded.dtype == np.float32
    np.testing.assert_array_equal(padded, [[0, 1, 2, 0, 0]])
    truncated = fit_length(ramp(1, 8), 5)
    np.testing.assert_array_equal(truncated, [[0, 1, 2, 3, 4]])
    assert truncated.flags["C_CONTIGUOUS"]
    assert fit_length(ramp(1, 5), 5).shape == (1, 5)


# --- records and reports ---------------------------------------------------------------------


def test_normalize_record_adds_a_missing_mask() -> None:
    normalizer = RecordNormalizer(("age_years", "heart_rate_bpm"), (50.0, 70.0), (10.0, 5.0))
    out = NormalizeRecordd("record", normalizer)({"record": {"age_years": 70.0}})
    np.testing.assert_allclose(out["record"], [2.0, 0.0])
    np.testing.assert_array_equal(out["record_missing"], [0.0, 1.0])


@pytest.mark.parametrize("text", ["short text", "a much longer report " * 10, ""])
def test_tokenized_gives_fixed_length_int64_ids_and_mask(text: str) -> None:
    out = Tokenized("report", word_tokenize)({"report": text})
    ids, mask = out["report_input_ids"], out["report_attention_mask"]
    assert ids.shape == mask.shape == (MAX_TOKENS,)
    assert ids.dtype == mask.dtype == np.int64
    words = min(len(text.split()), MAX_TOKENS)
    assert int(mask.sum()) == words
    assert ids[:words].tolist() == [len(w) for w in text.split()][:words]
    assert out["report"] == text

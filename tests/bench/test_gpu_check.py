"""The GPU check runs on the CPU too and reports its figures in the documented shape."""

from __future__ import annotations

import torch

from bench.gpu_check import run, synthetic_batch
from clinic.data.dataset import PreprocessConfig


def test_synthetic_batch_has_every_modality_present() -> None:
    batch = synthetic_batch(PreprocessConfig(), 3, seed=0)
    assert all(bool(batch[f"present_{m}"].all()) for m in ("xray", "ecg", "record", "report"))
    assert batch["xray"].shape == (3, 1, 128, 128)


def test_cpu_run_reports_positive_rates() -> None:
    result = run("cpu-small", steps=1, batch_size=2, device=torch.device("cpu"))
    assert result["device"] == "cpu" and result["peak_memory_mib"] is None
    assert result["pretrain_samples_per_s"] > 0 and result["inference_samples_per_s"] > 0

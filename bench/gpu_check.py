"""GPU check: one contrastive pre-training pass and batch inference, samples/s and peak memory.

On a CUDA machine it runs the ``gpu-base`` config in bf16 autocast; on a CPU it runs
``cpu-small`` with few steps, so the script itself is tested everywhere. Inputs are synthetic
batches of the configured shapes (all four modalities), so the figures measure the model, not
the disk.

    .venv/bin/python -m bench.gpu_check [--steps 20] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from clinic.data.dataset import PreprocessConfig, input_shapes
from clinic.data.records import DEFAULT_FEATURES, RecordNormalizer
from clinic.models.config import load_model_config
from clinic.models.loss import MultiModalContrastiveLoss
from clinic.models.model import ClinicModel
from clinic.train.data import fit_preprocess
from clinic.train.device import autocast_for, pick_device
from schemas.modalities import MODALITIES

LABELS = ("a", "b", "c", "d", "e")


def synthetic_batch(preprocess: PreprocessConfig, size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random inputs of every modality, everything present, random labels."""
    generator = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for key, shape in input_shapes(preprocess).items():
        if key == "report_input_ids":
            batch[key] = torch.randint(1000, 2000, (size, *shape), generator=generator)
        elif key in ("report_attention_mask", "ecg_lead_mask"):
            batch[key] = torch.ones(
                (size, *shape), dtype=torch.long if "report" in key else torch.bool
            )
        elif key.endswith("_missing"):
            batch[key] = torch.zeros((size, *shape))
        else:
            batch[key] = torch.rand((size, *shape), generator=generator)
    for modality in MODALITIES:
        batch[f"present_{modality}"] = torch.ones(size, dtype=torch.bool)
    batch["labels"] = (torch.rand((size, len(LABELS)), generator=generator) > 0.7).float()
    return batch


def run(config_name: str, steps: int, batch_size: int, device: torch.device) -> dict[str, Any]:
    config = load_model_config(config_name)
    preprocess = fit_preprocess(config, [])
    normalizer = RecordNormalizer(DEFAULT_FEATURES, (0.0,) * len(DEFAULT_FEATURES),
                                  (1.0,) * len(DEFAULT_FEATURES))  # fmt: skip
    preprocess = PreprocessConfig(**{**preprocess.__dict__, "record": normalizer})
    model = ClinicModel(config, preprocess, LABELS).to(device)
    batches = [
        {k: v.to(device) for k, v in synthetic_batch(preprocess, batch_size, i).items()}
        for i in range(min(steps, 4))
    ]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    train_rate = _pretrain_rate(model, batches, steps, device)
    infer_rate = _inference_rate(model, batches, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "config": config_name,
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "batch_size": batch_size,
        "steps": steps,
        "pretrain_samples_per_s": round(train_rate, 1),
        "inference_samples_per_s": round(infer_rate, 1),
        "peak_memory_mib": None if peak is None else round(peak, 1),
    }


def _pretrain_rate(
    model: ClinicModel, batches: list[dict[str, torch.Tensor]], steps: int, device: torch.device
) -> float:
    model.train()
    loss_fn = MultiModalContrastiveLoss()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    started = None
    for step in range(steps + 1):
        if step == 1:  # the first step pays for allocation and the feature caches
            _sync(device)
            started = time.perf_counter()
        batch = batches[step % len(batches)]
        with autocast_for(device):
            embeddings = model.embed(batch)
        out = loss_fn({m: e.float() for m, e in embeddings.items()}, model.present_masks(batch),
                      model.logit_scale())  # fmt: skip
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
    _sync(device)
    return steps * len(batches[0]["labels"]) / (time.perf_counter() - (started or 0.0))


@torch.no_grad()
def _inference_rate(
    model: ClinicModel, batches: list[dict[str, torch.Tensor]], steps: int, device: torch.device
) -> float:
    model.eval()
    model.feature_cache.clear()
    _sync(device)
    started = time.perf_counter()
    for step in range(steps):
        batch = {
            k: v.clone() if k == "xray" else v for k, v in batches[step % len(batches)].items()
        }
        batch["xray"] += step * 1e-3  # new pixels: no feature-cache hits in the timing
        with autocast_for(device):
            model(batch)
    _sync(device)
    return steps * len(batches[0]["labels"]) / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--config", default=None)
    args = parser.parse_args(argv)
    device = pick_device()
    cuda = device.type == "cuda"
    config = args.config or ("gpu-base" if cuda else "cpu-small")
    steps = args.steps or (50 if cuda else 3)
    batch_size = args.batch_size or (128 if cuda else 8)
    np.random.seed(0)
    torch.manual_seed(0)
    print(json.dumps(run(config, steps, batch_size, device), indent=2))


if __name__ == "__main__":
    main()

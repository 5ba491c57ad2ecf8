"""Forward + backward time per image of each X-ray backbone at a config's image size, on CPU.

The X-ray backbone of a config is chosen by this measurement, not by reputation: it builds the
whole :class:`XrayEncoder` (backbone + projection head, random weights, train mode) for each
backbone and reports the best of ``--repeat`` timed steps after one warm-up step.

    .venv/bin/python -m bench.xray_backbones [--config cpu-small] [--batch 8] [--repeat 3]
        [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import get_args

import torch

from clinic.models.config import XrayBackbone, load_model_config
from clinic.models.xray import XrayEncoder


def time_step(encoder: XrayEncoder, images: torch.Tensor, repeat: int) -> float:
    """Best wall time (s) of one forward + backward over ``images`` (B, 1, H, W)."""
    best = float("inf")
    for attempt in range(repeat + 1):  # attempt 0 warms up allocators and kernels
        encoder.zero_grad(set_to_none=True)
        start = time.perf_counter()
        encoder(images).sum().backward()
        elapsed = time.perf_counter() - start
        if attempt > 0:
            best = min(best, elapsed)
    return best


def measure(config_name: str, backbone: XrayBackbone, batch: int, repeat: int) -> dict[str, float]:
    config = load_model_config(config_name)
    xray = dataclasses.replace(config.xray, backbone=backbone, pretrained=False)
    encoder = XrayEncoder(xray, config.embed_dim).train()
    images = torch.rand(batch, 1, xray.image_size, xray.image_size, generator=torch.Generator())
    seconds = time_step(encoder, images, repeat)
    return {
        "ms_per_image": round(1000 * seconds / batch, 2),
        "params_m": round(sum(p.numel() for p in encoder.parameters()) / 1e6, 2),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="cpu-small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:  # a shared machine times more steadily on a fixed count
        torch.set_num_threads(args.threads)
    image_size = load_model_config(args.config).xray.image_size
    backbones = {
        name: measure(args.config, name, args.batch, args.repeat) for name in get_args(XrayBackbone)
    }
    report = {
        "config": args.config,
        "image_size": image_size,
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "backbones": backbones,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""The X-ray backbone benchmark runs every backbone and prints its JSON shape."""

from __future__ import annotations

import json

import pytest

from bench.xray_backbones import main


@pytest.mark.slow
def test_xray_backbone_benchmark_prints_every_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--config", "cpu-small", "--batch", "1", "--repeat", "1", "--threads", "1"])
    report = json.loads(capsys.readouterr().out)
    assert report["image_size"] == 128
    assert set(report["backbones"]) == {"efficientnet-lite0", "monai-resnet18", "small-cnn"}
    for figures in report["backbones"].values():
        assert figures["ms_per_image"] > 0 and figures["params_m"] > 0.05

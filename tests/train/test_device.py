"""Device choice fails loudly for missing CUDA; CPU runs in full precision; seeds reproduce."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from clinic.train.device import autocast_for, pick_device, seed_everything, to_device


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("requested", ["cuda", "cuda:1"])
def test_asking_for_missing_cuda_raises(requested: str) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        pick_device(requested)


@pytest.mark.usefixtures("no_cuda")
def test_cpu_is_the_fallback_and_can_be_requested() -> None:
    assert pick_device() == torch.device("cpu")
    assert pick_device("") == torch.device("cpu")
    assert pick_device("cpu") == torch.device("cpu")


def test_cuda_is_preferred_when_present(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device() == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")


def test_autocast_for_cpu_is_a_no_op() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast_for(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        product = a @ b
    assert product.dtype == torch.float32
    torch.testing.assert_close(product, a @ b, rtol=0.0, atol=0.0)


@pytest.mark.filterwarnings("ignore:CUDA is not available:UserWarning")
def test_autocast_for_cuda_is_bf16_autocast() -> None:
    context = autocast_for(torch.device("cuda"))
    assert isinstance(context, torch.autocast)
    assert context.fast_dtype == torch.bfloat16
    assert context.device == "cuda"


def test_to_device_moves_every_tensor() -> None:
    batch = {"x": torch.ones(2), "present_xray": torch.tensor([True, False])}
    moved = to_device(batch, torch.device("cpu"))
    assert set(moved) == set(batch)
    assert all(t.device.type == "cpu" for t in moved.values())
    assert torch.equal(moved["present_xray"], batch["present_xray"])


def test_seed_everything_reproduces_every_generator() -> None:
    def draw() -> tuple[float, float, float, float]:
        generator = seed_everything(11)
        return (
            random.random(),
            float(np.random.rand()),
            float(torch.rand(1)),
            float(torch.rand(1, generator=generator)),
        )

    first = draw()
    assert draw() == first
    seed_everything(12)
    assert random.random() != first[0]

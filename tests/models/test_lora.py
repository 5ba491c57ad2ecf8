"""LoRA adapters on tiny stand-ins for every encoder family clinic uses."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from clinic.models.lora import (
    AdapterBaseMismatch,
    AdapterFileError,
    AdapterSpec,
    active_adapter,
    adapter_hash,
    adapter_state,
    attach_adapter,
    attached_adapters,
    base_content_hash,
    base_tensors,
    detach_adapter,
    load_adapter,
    merge_adapters,
    read_manifest,
    save_adapter,
    set_active_adapter,
    trainable_parameter_names,
    unmerge_adapters,
)


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(6, 16)
        self.fc_out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, 6) -> (B, 4)
        out: Tensor = self.fc_out(torch.relu(self.fc_in(x)))
        return out


class TinyConv1d(nn.Module):
    """ECG-like: includes BatchNorm so running-stat buffers are part of the base hash."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv1d(3, 8, kernel_size=5, padding=2)
        self.norm = nn.BatchNorm1d(8)
        self.conv_b = nn.Conv1d(8, 8, kernel_size=3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, T) -> (B, 4)
        hidden = torch.relu(self.conv_b(torch.relu(self.norm(self.conv_a(x)))))
        out: Tensor = self.head(hidden.mean(dim=-1))
        return out


class TinyConv2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 6, kernel_size=3, padding=1)
        self.conv_b = nn.Conv2d(6, 6, kernel_size=3, stride=2, padding=1)
        self.head = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, H, W) -> (B, 4)
        hidden = torch.relu(self.conv_b(torch.relu(self.conv_a(x))))
        out: Tensor = self.head(hidden.mean(dim=(-2, -1)))
        return out


class TinyBert(nn.Module):
    """Wraps a HuggingFace BertModel so every case is called as ``model(x) -> Tensor``."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        config = BertConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.bert = BertModel(config)

    def forward(self, token_ids: Tensor) -> Tensor:  # (B, L) -> (B, L, 32)
        out: Tensor = self.bert(input_ids=token_ids).last_hidden_state
        return out


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[], nn.Module]
    example: Callable[[], Tensor]
    targets: tuple[str, ...]


CASES = [
    Case("mlp", TinyMLP, lambda: torch.randn(3, 6), ("fc_in", "fc_out")),
    Case("conv1d", TinyConv1d, lambda: torch.randn(3, 3, 20), ("conv_a", "conv_b")),
    Case("conv2d", TinyConv2d, lambda: torch.randn(3, 1, 8, 8), ("conv_a", "conv_b")),
    Case("bert", TinyBert, lambda: torch.randint(0, 40, (2, 7)), ("query", "value")),
]


def make_base(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return case.build().eval()


def spec_for(case: Case, rank: int = 2) -> AdapterSpec:
    return AdapterSpec(target_modules=case.targets, rank=rank, alpha=4)


def loss_of(model: nn.Module, x: Tensor) -> Tensor:
    """Squared error to a non-constant target: unlike mean(out**2) this is not flat under the
    LayerNorm that ends a BERT encoder."""
    out: Tensor = model(x)  # (..., F)
    target = torch.linspace(-1.0, 1.0, out.shape[-1])  # (F,)
    return ((out - target) ** 2).mean()


def train_steps(model: nn.Module, x: Tensor, steps: int = 1) -> None:
    """A few optimiser steps so lora_B (zero at init) becomes non-zero."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.5)
    for _ in range(steps):
        optimiser.zero_grad()
        loss_of(model, x).backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)


def lora_params(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    return {
        key: p for key, p in model.named_parameters() if ".lora_" in key and name in key.split(".")
    }


def base_copy(model: nn.Module) -> dict[str, Tensor]:
    return {key: t.detach().clone() for key, t in base_tensors(model).items()}


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    chosen: Case = request.param
    return chosen


def test_only_adapter_parameters_receive_gradients(case: Case) -> None:
    model = attach_adapter(make_base(case), spec_for(case), "site")
    x = case.example()
    adapters = lora_params(model, "site")
    assert adapters
    assert sorted(trainable_parameter_names(model)) == sorted(adapters)

    train_steps(model, x)  # makes B non-zero so A also gets a gradient next time
    loss_of(model, x).backward()  # type: ignore[no-untyped-call]

    adapter_ids = {id(p) for p in adapters.values()}
    for key, param in model.named_parameters():
        if id(param) not in adapter_ids:
            assert param.grad is None, key
    for key, param in adapters.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, key


def test_merge_matches_unmerged_and_unmerge_restores_base_exactly(case: Case) -> None:
    model = attach_adapter(make_base(case), spec_for(case), "site")
    x = case.example()
    train_steps(model, x)
    before = base_copy(model)
    hash_before = base_content_hash(model)
    with torch.no_grad():
        unmerged_out = model(x)
        merge_adapters(model)
        merged_out = model(x)
    raw_merged = {key: p.detach().clone() for key, p in model.named_parameters()}

    assert torch.allclose(merged_out, unmerged_out, atol=1e-5)
    raw_base = {key.replace(".base_layer.", "."): t for key, t in raw_merged.items()}
    assert any(not torch.equal(raw_base[k], before[k]) for k in before)  # really merged
    unmerge_adapters(model)
    after = base_copy(model)
    for key, tensor in before.items():
        assert torch.allclose(after[key], tensor, atol=1e-6), key
    assert base_content_hash(model) == hash_before
    with torch.no_grad():
        assert torch.allclose(model(x), unmerged_out, atol=1e-6)


def test_save_then_load_into_fresh_base_gives_identical_outputs(case: Case, tmp_path: Path) -> None:
    model = attach_adapter(make_base(case), spec_for(case), "site")
    fresh = make_base(case)
    x = case.example()
    train_steps(model, x, steps=2)

    save_adapter(model, "site", tmp_path / "site")
    manifest = read_manifest(tmp_path / "site")
    assert manifest.base_hash == base_content_hash(fresh)
    assert manifest.adapter_hash == adapter_hash(adapter_state(model, "site"))
    assert manifest.spec == spec_for(case)
    assert sorted(p.name for p in (tmp_path / "site").iterdir()) == [
        "adapter.json",
        "adapter.safetensors",
    ]

    assert load_adapter(fresh, tmp_path / "site") == "site"
    with torch.no_grad():
        loaded_out = fresh(x)
        assert torch.equal(loaded_out, model(x))
        assert not torch.allclose(loaded_out, make_base(case)(x))  # the adapter does something


def test_wrong_base_is_refused(case: Case, tmp_path: Path) -> None:
    model = attach_adapter(make_base(case), spec_for(case), "site")
    save_adapter(model, "site", tmp_path)
    other = make_base(case)
    with torch.no_grad():
        next(iter(other.parameters())).view(-1)[0] += 1e-3
    with pytest.raises(AdapterBaseMismatch) as caught:
        load_adapter(other, tmp_path)
    assert base_content_hash(model) in str(caught.value)
    assert base_content_hash(other) in str(caught.value)
    assert attached_adapters(other) == []  # nothing was attached on refusal


def test_swapping_two_adapters_keeps_base_and_each_output(case: Case) -> None:
    model = make_base(case)
    x = case.example()
    base_hash = base_content_hash(model)
    with torch.no_grad():
        base_out = model(x)

    attach_adapter(model, spec_for(case), "a")
    assert base_content_hash(model) == base_hash
    with torch.no_grad():
        assert torch.allclose(model(x), base_out)  # B starts at zero
    train_steps(model, x)
    attach_adapter(model, spec_for(case, rank=3), "b")
    assert active_adapter(model) == "b"
    assert all("b" in key.split(".") for key in trainable_parameter_names(model))
    train_steps(model, x, steps=2)
    with torch.no_grad():
        out_b = model(x)
        set_active_adapter(model, "a")
        out_a = model(x)
    assert not torch.allclose(out_a, out_b)
    assert all("a" in key.split(".") for key in trainable_parameter_names(model))

    for name, expected in [("b", out_b), ("a", out_a), ("b", out_b)]:
        set_active_adapter(model, name)
        with torch.no_grad():
            assert torch.equal(model(x), expected)
        assert base_content_hash(model) == base_hash


def test_base_hash_ignores_adapters_and_merging(case: Case) -> None:
    model = make_base(case)
    before = base_content_hash(model)
    attach_adapter(model, spec_for(case), "site")
    assert base_content_hash(model) == before
    train_steps(model, case.example())
    merge_adapters(model)
    assert base_content_hash(model) == before
    unmerge_adapters(model)
    assert base_content_hash(model) == before
    assert set(base_tensors(model)) == set(base_tensors(make_base(case)))


def test_swap_while_merged_stays_merged_with_new_adapter() -> None:
    case = CASES[0]
    model = make_base(case)
    x = case.example()
    attach_adapter(model, spec_for(case), "a")
    train_steps(model, x)
    attach_adapter(model, spec_for(case), "b")
    train_steps(model, x)
    base_hash = base_content_hash(model)
    with torch.no_grad():
        out_b = model(x)
        set_active_adapter(model, "a")
        out_a = model(x)
        merge_adapters(model)
        set_active_adapter(model, "b")
        assert torch.allclose(model(x), out_b, atol=1e-5)
        set_active_adapter(model, "a")
        assert torch.allclose(model(x), out_a, atol=1e-5)
    unmerge_adapters(model)
    assert base_content_hash(model) == base_hash


def test_base_hash_is_a_pinned_constant() -> None:
    """Stable across processes and runs: no id(), no Python hash(), no memory addresses."""
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        for index, param in enumerate(model.parameters()):
            param.copy_(torch.arange(param.numel(), dtype=torch.float32).view_as(param) + index)
    assert (
        base_content_hash(model)
        == "cf31da8cd77ed20379adc8ee84174ace5e01f59a2e54b58f3c035f1b907f8022"
    )


def test_buffers_and_dtype_change_the_base_hash() -> None:
    model = TinyConv1d()
    before = base_content_hash(model)
    with torch.no_grad():
        model.norm.running_mean.add_(1.0)  # type: ignore[union-attr]
    assert base_content_hash(model) != before
    assert base_content_hash(TinyMLP().double()) != base_content_hash(TinyMLP())


def test_unknown_adapter_name_raises_key_error() -> None:
    case = CASES[0]
    model = attach_adapter(make_base(case), spec_for(case), "a")
    with pytest.raises(KeyError, match="nope"):
        set_active_adapter(model, "nope")
    with pytest.raises(KeyError):
        adapter_state(model, "nope")
    with pytest.raises(ValueError, match="already attached"):
        attach_adapter(model, spec_for(case), "a")


def test_missing_and_corrupt_files_give_clear_errors(tmp_path: Path) -> None:
    case = CASES[0]
    model = attach_adapter(make_base(case), spec_for(case), "a")
    train_steps(model, case.example())
    with pytest.raises(AdapterFileError, match="no adapter manifest"):
        load_adapter(make_base(case), tmp_path / "absent")

    saved = save_adapter(model, "a", tmp_path / "a")
    weights = saved / "adapter.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(AdapterFileError, match="corrupt adapter weights"):
        load_adapter(make_base(case), saved)

    weights.write_bytes(original[:-4] + bytes(4))  # still parses, different content
    with pytest.raises(AdapterFileError, match="hash"):
        load_adapter(make_base(case), saved)

    weights.unlink()
    with pytest.raises(AdapterFileError, match="no adapter weights"):
        load_adapter(make_base(case), saved)

    (saved / "adapter.json").write_text("{not json")
    with pytest.raises(AdapterFileError, match="unreadable adapter manifest"):
        load_adapter(make_base(case), saved)


def test_load_under_another_name_and_into_existing_adapter(tmp_path: Path) -> None:
    case = CASES[0]
    model = attach_adapter(make_base(case), spec_for(case), "a")
    x = case.example()
    train_steps(model, x)
    save_adapter(model, "a", tmp_path)

    target = attach_adapter(make_base(case), spec_for(case), "existing")
    assert load_adapter(target, tmp_path, name="renamed") == "renamed"
    assert attached_adapters(target) == ["existing", "renamed"]
    assert load_adapter(target, tmp_path, name="existing") == "existing"
    with torch.no_grad():
        assert torch.equal(target(x), model(x))


def test_save_accepts_given_base_hash_and_writes_peft_version(tmp_path: Path) -> None:
    case = CASES[0]
    model = attach_adapter(make_base(case), spec_for(case), "a")
    save_adapter(model, "a", tmp_path, base_hash="f" * 64)
    manifest = json.loads((tmp_path / "adapter.json").read_text())
    assert manifest["base_hash"] == "f" * 64
    assert manifest["peft_version"]
    assert not list(tmp_path.glob(".adapter*"))  # no temp files left behind


def test_spec_validation() -> None:
    with pytest.raises(ValueError):
        AdapterSpec(target_modules=())
    with pytest.raises(ValueError):
        AdapterSpec(target_modules=("fc",), rank=0)
    with pytest.raises(ValueError):
        AdapterSpec(target_modules=("fc",), dropout=1.0)


def test_layout_mismatch_is_refused_and_rolled_back(tmp_path: Path) -> None:
    case = CASES[0]
    model = attach_adapter(make_base(case), spec_for(case), "a")
    save_adapter(model, "a", tmp_path)

    other_rank = attach_adapter(make_base(case), spec_for(case, rank=3), "a")
    with pytest.raises(AdapterFileError, match="expects tensors"):
        load_adapter(other_rank, tmp_path)

    manifest_path = tmp_path / "adapter.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["spec"]["rank"] = 3  # disagrees with the stored rank-2 weights
    manifest_path.write_text(json.dumps(manifest))
    target = attach_adapter(make_base(case), spec_for(case), "keep")
    with pytest.raises(AdapterFileError, match="expects tensors"):
        load_adapter(target, tmp_path)
    assert attached_adapters(target) == ["keep"]
    assert active_adapter(target) == "keep"
    assert sorted(trainable_parameter_names(target)) == sorted(lora_params(target, "keep"))


def test_detach_restores_base_behaviour() -> None:
    case = CASES[0]
    model = make_base(case)
    x = case.example()
    with torch.no_grad():
        base_out = model(x)
    attach_adapter(model, spec_for(case), "a")
    train_steps(model, x)
    attach_adapter(model, spec_for(case), "b")
    set_active_adapter(model, "a")
    detach_adapter(model, "b")
    assert attached_adapters(model) == ["a"]
    assert active_adapter(model) == "a"
    detach_adapter(model, "a")
    assert attached_adapters(model) == []
    with torch.no_grad():
        assert torch.equal(model(x), base_out)

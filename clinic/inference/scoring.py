"""Scoring cases: calibrated findings, uncertainty and per-modality contributions (no writes).

For each case the encoders run once; everything after that works on the (B, D) embeddings:

- calibrated probability: fusion over the modalities the case has, then the Platt map fitted
  for exactly that subset (abstaining where that subset was not good enough on validation);
- uncertainty: Monte-Carlo dropout in the fusion transformer (``mc_samples`` passes in one
  forward per case), reported as the standard deviation and a 90 % interval of the calibrated
  probability; each case's dropout draws are seeded from its lineage hash, so a case gets the
  same interval whichever batch, process or machine scores it (the Ray engine relies on this);
- contribution of modality m: calibrated probability with all the case's modalities minus the
  calibrated probability with m left out (the subset without m has its own calibration); for a
  single-modality case the comparison is the fusion's prior (no modality at all).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from clinic.data.cases import Case
from clinic.data.dataset import make_collate
from clinic.inference.lineage import lineage_hash, prediction_lineage
from clinic.inference.loaded import LoadedModel
from clinic.models.calibration import CalibrationMap, sigmoid
from clinic.store.store import Store
from clinic.train.data import make_dataset
from clinic.train.device import autocast_for, to_device
from schemas.modalities import subset_name

FloatArray = npt.NDArray[np.float64]
Progress = Callable[[int], None]
INTERVAL = (5.0, 95.0)


@dataclass
class Finding:
    label: str
    probability: float
    interval: tuple[float, float]
    uncertainty: float
    abstained: bool
    abstain_reason: str | None
    contributions: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "probability": self.probability,
            "interval": list(self.interval),
            "uncertainty": self.uncertainty,
            "abstained": self.abstained,
            "abstain_reason": self.abstain_reason,
            "contributions": self.contributions,
        }


@dataclass
class CaseScore:
    """Everything computed for one case; the service decides what to store."""

    case: Case
    subset: str
    findings: list[Finding]
    embeddings: dict[str, npt.NDArray[np.float32]]  # modality → unit vector, and "fused"
    lineage: dict[str, Any] = field(default_factory=dict)
    lineage_hash: str = ""


class NoUsableInputError(ValueError):
    """The case has none of the modalities the model reads."""


@dataclass(frozen=True)
class ScoringOptions:
    batch_size: int = 32
    mc_samples: int = 30
    workers: int = 0


def score_cases(
    loaded: LoadedModel,
    cases: Sequence[Case],
    store: Store,
    options: ScoringOptions = ScoringOptions(),
    progress: Progress | None = None,
) -> Iterator[CaseScore | NoUsableInputError]:
    """Score ``cases`` in batches, yielding one result per case in order (an error object for a
    case the model cannot read, so one bad case never stops a cohort)."""
    dataset = make_dataset(cases, store, loaded.model, train=False)
    loader = DataLoader(
        dataset, batch_size=options.batch_size, shuffle=False,
        collate_fn=make_collate(dataset.preprocess), num_workers=options.workers,
    )  # fmt: skip
    for batch in loader:
        chunk = [cases[int(i)] for i in batch["index"]]
        yield from score_batch(loaded, chunk, batch, options)
        if progress:
            progress(len(chunk))


def score_batch(
    loaded: LoadedModel,
    cases: Sequence[Case],
    batch: Mapping[str, Tensor],
    options: ScoringOptions = ScoringOptions(),
) -> list[CaseScore | NoUsableInputError]:
    """Score one collated batch of ``cases`` (row i is ``cases[i]``), wherever it was decoded."""
    with torch.no_grad():
        return list(_score_batch(loaded, cases, to_device(batch, loaded.device), options))


def _score_batch(
    loaded: LoadedModel, cases: Sequence[Case], batch: dict[str, Tensor], options: ScoringOptions
) -> Iterator[CaseScore | NoUsableInputError]:
    model = loaded.model
    with autocast_for(loaded.device):
        embedded = model.embed(batch)
    embeddings = {m: e.float() for m, e in embedded.items()}
    present = model.present_masks(batch)
    subsets = [_row_subset(present, row) for row in range(len(cases))]
    output = model.fusion(embeddings, present)
    probabilities = _calibrated(loaded.calibration, output.logits, subsets)
    lineages = [prediction_lineage(loaded.lineage, case) for case in cases]
    hashes = [lineage_hash(lineage) for lineage in lineages]
    seeds = [dropout_seed(value) for value in hashes]
    spread = _mc_dropout(loaded, embeddings, present, subsets, options.mc_samples, seeds)
    contributions = _contributions(loaded, embeddings, present, subsets, probabilities)
    fused = torch.nn.functional.normalize(output.fused.float(), dim=-1).cpu().numpy()
    vectors = {m: e.cpu().numpy() for m, e in embeddings.items()}
    for row, case in enumerate(cases):
        if not subsets[row]:
            yield NoUsableInputError(
                f"case {case.case_id} has none of the modalities model {loaded.name!r} reads "
                f"({', '.join(model.modalities)})"
            )
            continue
        name = subset_name(subsets[row])
        findings = _findings(loaded, name, probabilities[row], spread[row], contributions[row])
        own = {m: vectors[m][row] for m in subsets[row]}
        own["fused"] = fused[row]
        yield CaseScore(case, name, findings, own, lineages[row], hashes[row])


def _row_subset(present: dict[str, Tensor], row: int) -> tuple[str, ...]:
    return tuple(m for m, mask in present.items() if bool(mask[row]))


def _calibrated(
    calibration: CalibrationMap, logits: Tensor, subsets: Sequence[tuple[str, ...]]
) -> FloatArray:
    """(B, K) calibrated probabilities, each row with its own subset's map; NaN for no subset."""
    raw = logits.double().cpu().numpy()
    out = np.full(raw.shape, np.nan)
    for subset in set(subsets):
        if not subset:
            continue
        rows = [i for i, s in enumerate(subsets) if s == subset]
        out[rows] = calibration.probabilities(raw[rows], subset_name(subset))
    return out


def dropout_seed(case_lineage_hash: str) -> int:
    """The seed of a case's Monte-Carlo dropout draws: 60 bits of its lineage hash."""
    return int(case_lineage_hash[:15], 16)


def _mc_dropout(
    loaded: LoadedModel,
    embeddings: dict[str, Tensor],
    present: dict[str, Tensor],
    subsets: Sequence[tuple[str, ...]],
    samples: int,
    seeds: Sequence[int],
) -> npt.NDArray[np.float64]:
    """(B, K, 3): standard deviation, 5th and 95th percentile of the calibrated probability.

    One forward of ``samples`` copies per case, under the case's own seed, in a forked RNG
    state: the draws depend on the case alone, never on its neighbours in the batch, and the
    caller's random state is left as it was.
    """
    fusion = loaded.model.fusion
    devices = [loaded.device] if loaded.device.type == "cuda" else []
    per_case: list[Tensor] = []
    fusion.train()
    try:
        for row, seed in enumerate(seeds):
            repeated = {m: e[row : row + 1].repeat(samples, 1) for m, e in embeddings.items()}
            repeated_present = {m: p[row : row + 1].repeat(samples) for m, p in present.items()}
            with torch.random.fork_rng(devices=devices, device_type=loaded.device.type):
                torch.manual_seed(seed)
                per_case.append(fusion(repeated, repeated_present).logits)
    finally:
        fusion.eval()
    if not per_case:
        return np.zeros((0, len(loaded.label_names), 3))
    rows = [subset for subset in subsets for _ in range(samples)]
    draws = _calibrated(loaded.calibration, torch.cat(per_case), rows)
    draws = draws.reshape(len(subsets), samples, -1)
    low, high = np.percentile(draws, INTERVAL, axis=1)
    return np.stack([draws.std(axis=1), low, high], axis=-1)


def _contributions(
    loaded: LoadedModel,
    embeddings: dict[str, Tensor],
    present: dict[str, Tensor],
    subsets: Sequence[tuple[str, ...]],
    full: FloatArray,
) -> list[dict[str, FloatArray]]:
    """Per row, modality → (K,) change in calibrated probability when that modality is left out."""
    out: list[dict[str, FloatArray]] = [{} for _ in subsets]
    fusion = loaded.model.fusion
    for modality in present:
        hidden = {m: p & (m != modality) for m, p in present.items()}
        reduced = [tuple(m for m in s if m != modality) for s in subsets]
        logits = fusion(embeddings, hidden).logits
        without = _calibrated(loaded.calibration, logits, reduced)
        prior = sigmoid(logits.double().cpu().numpy())
        for row, subset in enumerate(subsets):
            if modality not in subset:
                continue
            baseline = without[row] if reduced[row] else prior[row]
            out[row][modality] = full[row] - baseline
    return out


def _findings(
    loaded: LoadedModel,
    subset: str,
    probabilities: FloatArray,
    spread: FloatArray,
    contributions: dict[str, FloatArray],
) -> list[Finding]:
    abstains = loaded.calibration.abstains(subset)
    reasons = abstain_reasons(loaded.calibration, subset)
    return [
        Finding(
            label=label,
            probability=float(probabilities[k]),
            interval=(float(spread[k, 1]), float(spread[k, 2])),
            uncertainty=float(spread[k, 0]),
            abstained=abstains[k],
            abstain_reason=reasons[k] if abstains[k] else None,
            contributions={m: float(values[k]) for m, values in contributions.items()},
        )
        for k, label in enumerate(loaded.label_names)
    ]


def abstain_reasons(calibration: CalibrationMap, subset: str) -> list[str]:
    """Why each label would abstain for ``subset`` (read next to ``CalibrationMap.abstains``)."""
    fitted = calibration.subsets.get(subset)
    if fitted is None:
        reason = f"no validation cases with exactly these modalities ({subset}) at calibration"
        return [reason] * len(calibration.label_names)
    return [
        f"validation AUROC for {subset} is undefined (one class only)"
        if value is None
        else f"validation AUROC for {subset} is {value:.2f} < {calibration.min_auroc:.2f}"
        for value in fitted.auroc
    ]

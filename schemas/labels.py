"""The label vocabulary of the platform.

Labels arrive from three sources with their own names: PTB-XL diagnostic superclasses for ECGs,
the 14 CheXpert observations for chest radiographs (spelled exactly as in the CheXpert CSV
headers, so CSV columns map without a rename table), and the conditions of the phantom
(synthetic) cohort, which are the platform's own ``clinic`` vocabulary. Keeping them as typed
constants lets importers and the trainer refuse a misspelt label instead of silently creating a
new class.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "PHANTOM_CONDITIONS",
    "PTBXL_SUPERCLASSES",
    "VOCABULARIES",
    "ChexpertObservation",
    "Condition",
    "LabelVocabulary",
    "PtbxlSuperclass",
    "get_vocabulary",
]


class PtbxlSuperclass(StrEnum):
    """PTB-XL diagnostic superclasses (``scp_statements.csv`` column ``diagnostic_class``)."""

    NORM = "NORM"  # normal ECG
    MI = "MI"  # myocardial infarction
    STTC = "STTC"  # ST/T change
    CD = "CD"  # conduction disturbance
    HYP = "HYP"  # hypertrophy


class ChexpertObservation(StrEnum):
    """The 14 CheXpert observations, values exactly as the CheXpert CSV headers spell them."""

    NO_FINDING = "No Finding"
    ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"
    CARDIOMEGALY = "Cardiomegaly"
    LUNG_OPACITY = "Lung Opacity"
    LUNG_LESION = "Lung Lesion"
    EDEMA = "Edema"
    CONSOLIDATION = "Consolidation"
    PNEUMONIA = "Pneumonia"
    ATELECTASIS = "Atelectasis"
    PNEUMOTHORAX = "Pneumothorax"
    PLEURAL_EFFUSION = "Pleural Effusion"
    PLEURAL_OTHER = "Pleural Other"
    FRACTURE = "Fracture"
    SUPPORT_DEVICES = "Support Devices"


class Condition(StrEnum):
    """Conditions of the phantom cohort: the platform's own (``clinic``) label vocabulary."""

    HEART_FAILURE = "heart_failure"
    ATRIAL_FIBRILLATION = "atrial_fibrillation"
    MYOCARDIAL_INFARCTION = "myocardial_infarction"
    PNEUMONIA = "pneumonia"
    PLEURAL_EFFUSION = "pleural_effusion"
    LEFT_VENTRICULAR_HYPERTROPHY = "left_ventricular_hypertrophy"
    NO_FINDING = "no_finding"


PTBXL_SUPERCLASSES: tuple[str, ...] = tuple(member.value for member in PtbxlSuperclass)
CHEXPERT_OBSERVATIONS: tuple[str, ...] = tuple(member.value for member in ChexpertObservation)
PHANTOM_CONDITIONS: tuple[str, ...] = tuple(member.value for member in Condition)


class LabelVocabulary(BaseModel):
    """A named, ordered set of label names (the order is the model's output order)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    labels: tuple[str, ...] = Field(min_length=1)
    description: str = ""

    def __contains__(self, label: object) -> bool:
        """Whether ``label`` (exact spelling) belongs to this vocabulary."""
        return label in self.labels

    def index(self, label: str) -> int:
        """Position of ``label`` in the output order; ValueError for an unknown label."""
        return self.labels.index(label)


#: Vocabulary name (as stored in ``LabelIn.vocabulary``) → vocabulary.
VOCABULARIES: Mapping[str, LabelVocabulary] = MappingProxyType(
    {
        "ptbxl_superclass": LabelVocabulary(
            name="ptbxl_superclass",
            labels=PTBXL_SUPERCLASSES,
            description="PTB-XL diagnostic superclasses (ECG).",
        ),
        "chexpert": LabelVocabulary(
            name="chexpert",
            labels=CHEXPERT_OBSERVATIONS,
            description="CheXpert observations (chest radiograph), four-state labels.",
        ),
        "clinic": LabelVocabulary(
            name="clinic",
            labels=PHANTOM_CONDITIONS,
            description="Conditions of the phantom cohort; the platform's own vocabulary.",
        ),
    }
)


def get_vocabulary(name: str) -> LabelVocabulary:
    """The vocabulary called ``name``; KeyError names the known vocabularies otherwise."""
    try:
        return VOCABULARIES[name]
    except KeyError:
        known = ", ".join(sorted(VOCABULARIES))
        raise KeyError(f"unknown label vocabulary {name!r}; known: {known}") from None

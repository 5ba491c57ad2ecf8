"""Data contracts of the platform: the clinical record schema and the label vocabulary.

Deliberately light: this package imports pydantic only (never torch or sqlalchemy), so any
process — a CLI, an importer, a worker — can validate against the contract cheaply.
"""

from schemas.clinical_record import (
    CORE_FIELD_NAMES,
    ColumnBinding,
    FieldDtype,
    FieldSpec,
    RecordSchema,
    UnitConversion,
    load_record_schema,
    normalize_column_name,
)
from schemas.labels import (
    CHEXPERT_OBSERVATIONS,
    PHANTOM_CONDITIONS,
    PTBXL_SUPERCLASSES,
    VOCABULARIES,
    ChexpertObservation,
    Condition,
    LabelVocabulary,
    PtbxlSuperclass,
    get_vocabulary,
)

__all__ = [
    "CHEXPERT_OBSERVATIONS",
    "CORE_FIELD_NAMES",
    "PHANTOM_CONDITIONS",
    "PTBXL_SUPERCLASSES",
    "VOCABULARIES",
    "ChexpertObservation",
    "ColumnBinding",
    "Condition",
    "FieldDtype",
    "FieldSpec",
    "LabelVocabulary",
    "PtbxlSuperclass",
    "RecordSchema",
    "UnitConversion",
    "get_vocabulary",
    "load_record_schema",
    "normalize_column_name",
]

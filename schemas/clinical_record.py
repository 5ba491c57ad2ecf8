"""The data contract for tabular clinical records (vitals, demographics, labs).

One :class:`RecordSchema` names the *core* fields the store keeps as typed database columns and,
for each, how a source table may spell the column (aliases) and in which other units it may arrive
(conversions). Everything not in the schema is kept by the ingest layer as untyped extras, so a
schema never has to anticipate every column of every cohort.

The schema is data (``clinical_record_v1.json`` shipped in this package), not code, so that the
contract can be versioned, diffed and reviewed without reading Python.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

__all__ = [
    "CORE_FIELD_NAMES",
    "ColumnBinding",
    "ColumnRole",
    "FieldDtype",
    "FieldSpec",
    "RecordSchema",
    "UnitConversion",
    "load_record_schema",
    "normalize_column_name",
]

FieldDtype = Literal["float", "int", "category", "bool"]

#: The core fields of ``clinical_record_v1``: the database has one typed column per name.
CORE_FIELD_NAMES: tuple[str, ...] = (
    "age_years",
    "sex",
    "height_cm",
    "weight_kg",
    "heart_rate_bpm",
    "systolic_bp_mmhg",
    "diastolic_bp_mmhg",
    "respiratory_rate_per_min",
    "temperature_c",
    "spo2_percent",
    "bnp_pg_ml",
    "troponin_ng_l",
    "wbc_10e9_l",
    "crp_mg_l",
)

_SCHEMA_NAME = re.compile(r"^[a-z0-9_]+$")
_MAX_MEMOISED_COLUMNS = 4096
_NON_ALNUM = re.compile(r"[\W_]+")


@lru_cache(maxsize=65_536)
def normalize_column_name(column: str) -> str:
    """Fold a column header to its matching key.

    Source tables spell the same column as ``Age``, ``age (years)`` or ``SpO2 [%]``; matching on
    a case-folded, punctuation-collapsed key lets one alias cover them all without regexes in the
    schema. ``"Temperature (°F)"`` becomes ``"temperature_f"``.
    """
    folded = unicodedata.normalize("NFKC", column).casefold()
    return _NON_ALNUM.sub("_", folded).strip("_")


class UnitConversion(BaseModel):
    """A non-canonical unit a field may arrive in, selected by column alias or in-cell unit.

    The canonical value is ``(value + offset) * factor`` (°F → °C: offset -32, factor 5/9), so one
    affine form covers every conversion the contract needs and stays reviewable as data.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    unit: str = Field(min_length=1)
    aliases: tuple[str, ...] = ()
    factor: float
    offset: float = 0.0

    def to_canonical(self, value: float) -> float:
        """Convert ``value`` given in :attr:`unit` to the field's canonical unit.

        Rounded to 10 decimals so that binary float noise (100.4 °F → 38.00000000000001 °C)
        never reaches the store; no clinical quantity is that precise.
        """
        return round((value + self.offset) * self.factor, 10)


class FieldSpec(BaseModel):
    """One core field: its type, canonical unit, plausible range and accepted spellings.

    ``min``/``max`` are *plausibility* bounds (inclusive): a value outside them is a data error
    (wrong unit, typo), never a clinical finding, so the ingest layer drops it with a warning.
    ``allowed`` lists the canonical category values; ``value_aliases`` maps other spellings of a
    category (``"F"``, ``"weiblich"``) to one of them, compared case-insensitively.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    dtype: FieldDtype
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    value_aliases: dict[str, str] = Field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    conversions: tuple[UnitConversion, ...] = ()
    description: str = ""

    _category_lookup: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_consistency(self) -> FieldSpec:
        """Refuse specs that could never validate a value, so errors surface at load time."""
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"field {self.name}: min > max")
        if self.dtype == "category":
            if not self.allowed:
                raise ValueError(f"field {self.name}: a category needs allowed values")
            unknown = set(self.value_aliases.values()) - set(self.allowed)
            if unknown:
                raise ValueError(f"field {self.name}: value aliases map to unknown values")
        elif self.allowed is not None or self.value_aliases:
            raise ValueError(f"field {self.name}: allowed values only apply to categories")
        if self.conversions and self.dtype not in ("float", "int"):
            raise ValueError(f"field {self.name}: unit conversions only apply to numbers")
        return self

    def model_post_init(self, context: object, /) -> None:
        """Build the category lookup once; it is consulted for every row."""
        lookup = {value.casefold(): value for value in self.allowed or ()}
        lookup.update({key.casefold(): value for key, value in self.value_aliases.items()})
        self._category_lookup = lookup

    def category_lookup(self) -> Mapping[str, str]:
        """Case-folded spelling → canonical category value (canonical values included)."""
        return MappingProxyType(self._category_lookup)


class ColumnBinding(BaseModel):
    """What a source column means: which field, and which conversion (None: canonical unit)."""

    model_config = ConfigDict(frozen=True)

    field: FieldSpec
    conversion: UnitConversion | None = None


#: A column's role in a schema: identifier, dropped identifier, a field binding, or None (extra).
ColumnRole: TypeAlias = Literal["id", "drop"] | ColumnBinding | None


class RecordSchema(BaseModel):
    """A versioned set of core fields plus the columns that identify a record.

    ``id_columns`` are the identifier columns a table carries (patient, encounter): never
    values, never extras. ``drop_columns`` are direct identifiers (names, addresses, dates of
    birth) that must not be carried into the store as extras even though no field claims them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9_]+$")
    version: int = Field(ge=1)
    description: str = ""
    id_columns: tuple[str, ...] = ("patient_id", "encounter_id")
    drop_columns: tuple[str, ...] = ()
    fields: tuple[FieldSpec, ...]

    _bindings: dict[str, ColumnBinding] = PrivateAttr(default_factory=dict)
    _id_keys: frozenset[str] = PrivateAttr(default=frozenset())
    _drop_keys: frozenset[str] = PrivateAttr(default=frozenset())
    _roles: dict[str, ColumnRole] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _check_unique(self) -> RecordSchema:
        """Refuse duplicate field names or a column alias claimed twice (ambiguous mapping)."""
        names = [spec.name for spec in self.fields]
        if len(set(names)) != len(names):
            raise ValueError("duplicate field names")
        seen: set[str] = {normalize_column_name(c) for c in (*self.id_columns, *self.drop_columns)}
        if len(seen) != len(self.id_columns) + len(self.drop_columns):
            raise ValueError("id_columns and drop_columns overlap or repeat")
        for key, _binding in self._iter_bindings():
            if key in seen:
                raise ValueError(f"column alias {key!r} is claimed twice")
            seen.add(key)
        return self

    def __eq__(self, other: object) -> bool:
        """Equal when the contracts are equal; the lookup memo (private state) is ignored."""
        if not isinstance(other, RecordSchema):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def model_post_init(self, context: object, /) -> None:
        """Index every accepted column spelling once, so per-row lookups are a dict hit."""
        self._bindings = dict(self._iter_bindings())
        self._id_keys = frozenset(map(normalize_column_name, self.id_columns))
        self._drop_keys = frozenset(map(normalize_column_name, self.drop_columns))

    def _iter_bindings(self) -> list[tuple[str, ColumnBinding]]:
        """Every (normalised column name, binding) pair the schema accepts, in priority order."""
        pairs: list[tuple[str, ColumnBinding]] = []
        for spec in self.fields:
            canonical = ColumnBinding(field=spec)
            for alias in dict.fromkeys((spec.name, *spec.aliases)):
                pairs.append((normalize_column_name(alias), canonical))
            for conversion in spec.conversions:
                bound = ColumnBinding(field=spec, conversion=conversion)
                pairs.extend((normalize_column_name(a), bound) for a in conversion.aliases)
        return pairs

    @property
    def field_names(self) -> tuple[str, ...]:
        """Names of all fields, in schema order (the order of the database columns)."""
        return tuple(spec.name for spec in self.fields)

    def field(self, name: str) -> FieldSpec:
        """The spec of field ``name``; KeyError when the schema has no such field."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def resolve_column(self, column: str) -> ColumnBinding | None:
        """Which field (and unit) a source column feeds, or None when it is not a field."""
        return self._bindings.get(normalize_column_name(column))

    def column_role(self, column: str) -> ColumnRole:
        """What a source column is: an id column, a dropped identifier, a field, or None (an
        extra). Memoised per spelling: tables repeat the same header on every row."""
        roles = self._roles
        role = roles.get(column)
        if role is None and column not in roles:
            key = normalize_column_name(column)
            if key in self._id_keys:
                role = "id"
            elif key in self._drop_keys:
                role = "drop"
            else:
                role = self._bindings.get(key)
            if len(roles) < _MAX_MEMOISED_COLUMNS:
                roles[column] = role
        return role

    def is_id_column(self, column: str) -> bool:
        """Whether ``column`` is one of the schema's identifier columns."""
        return normalize_column_name(column) in self._id_keys

    def is_drop_column(self, column: str) -> bool:
        """Whether ``column`` is a direct identifier that must never be kept as an extra."""
        return normalize_column_name(column) in self._drop_keys


@lru_cache(maxsize=16)
def load_record_schema(name: str = "clinical_record_v1") -> RecordSchema:
    """Load a record schema shipped as package data (``schemas/<name>.json``).

    Cached: schemas are frozen, and every reader of every row asks for the same one. Raises
    ValueError for a name that is not a shipped schema (names are restricted to
    ``[a-z0-9_]`` so a caller can never read an arbitrary file).
    """
    if not _SCHEMA_NAME.fullmatch(name):
        raise ValueError(f"invalid record schema name {name!r}")
    resource = resources.files("schemas").joinpath(f"{name}.json")
    try:
        text = resource.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ValueError(f"unknown record schema {name!r}") from exc
    return RecordSchema.model_validate_json(text)

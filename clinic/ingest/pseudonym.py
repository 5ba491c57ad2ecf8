"""Keyed pseudonyms and per-patient date shifts.

HMAC-SHA256 with a key that never enters the database: the same source id always maps to the same
pseudonym (so re-ingestion links up), but nobody holding only the store can reverse or recompute it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

DATE_SHIFT_RANGE_DAYS = 3650


@dataclass(frozen=True)
class Pseudonymizer:
    key: bytes

    def _digest(self, purpose: str, *parts: str) -> bytes:
        message = "\x1f".join((purpose, *parts)).encode()
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def patient(self, source_patient_id: str) -> str:
        """Pseudonym for a source patient id, e.g. ``P3f9a…`` (24 hex digits)."""
        return "P" + self._digest("patient", source_patient_id.strip()).hex()[:24]

    def encounter(self, source_patient_id: str, source_encounter_id: str) -> str:
        """Pseudonym for an encounter, scoped by its patient so ids may repeat across patients."""
        digest = self._digest("encounter", source_patient_id.strip(), source_encounter_id.strip())
        return "E" + digest.hex()[:24]

    def date_shift_days(self, patient_pseudonym: str) -> int:
        """A consistent per-patient shift into the past (1…3650 days): intervals are preserved."""
        value = int.from_bytes(self._digest("date-shift", patient_pseudonym)[:8], "big")
        return -(1 + value % DATE_SHIFT_RANGE_DAYS)

    def uid_secret(self) -> bytes:
        """Secret used to remap DICOM UIDs deterministically."""
        return self._digest("dicom-uid")

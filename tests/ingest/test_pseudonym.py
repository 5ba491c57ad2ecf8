from __future__ import annotations

from clinic.ingest.pseudonym import Pseudonymizer


def test_pseudonyms_are_stable_keyed_and_scoped() -> None:
    first, other_key = Pseudonymizer(b"k" * 20), Pseudonymizer(b"j" * 20)
    assert first.patient("MRN001") == first.patient(" MRN001 ")
    assert first.patient("MRN001") != other_key.patient("MRN001")
    assert first.patient("MRN001") != first.patient("MRN002")
    assert "MRN001" not in first.patient("MRN001")
    assert first.encounter("A", "1") != first.encounter("B", "1")


def test_date_shift_is_consistent_and_in_the_past() -> None:
    pseudonyms = Pseudonymizer(b"k" * 20)
    shifts = {pseudonyms.date_shift_days(pseudonyms.patient(f"p{i}")) for i in range(200)}
    assert all(-3650 <= s <= -1 for s in shifts)
    assert len(shifts) > 150
    patient = pseudonyms.patient("p1")
    assert pseudonyms.date_shift_days(patient) == pseudonyms.date_shift_days(patient)

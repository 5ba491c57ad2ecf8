"""The role × permission matrix and the principal's checks."""

from __future__ import annotations

import pytest

from clinic.auth.roles import ROLE_PERMISSIONS, AccessDenied, Permission, Principal, Role, require

P = Permission
EXPECTED = {
    Role.CLINICIAN: {
        P.CASE_VIEW,
        P.PREDICT,
        P.PREDICTION_READ,
        P.SIMILAR_SEARCH,
        P.COHORT_SCORE,
        P.COHORT_REPORT,
        P.EXPORT_FHIR,
        P.REVIEW_WRITE,
    },
    Role.RESEARCHER: {
        P.PREDICT,
        P.PREDICTION_READ,
        P.SIMILAR_SEARCH,
        P.COHORT_SCORE,
        P.COHORT_REPORT,
    },
    Role.ADMIN: set(Permission) - {P.REVIEW_WRITE},
    Role.SYSTEM: {P.INGEST, P.TRAIN, P.PREDICT, P.PREDICTION_READ, P.COHORT_SCORE},
}


def test_every_role_has_exactly_its_permissions() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
    for role, permissions in EXPECTED.items():
        assert ROLE_PERMISSIONS[role] == permissions, role


@pytest.mark.parametrize("permission", [P.CASE_VIEW, P.EXPORT_FHIR, P.AUDIT_READ, P.USER_MANAGE])
def test_researchers_see_no_identifiable_content_nor_the_audit_trail(permission: P) -> None:
    assert not Principal("rita", Role.RESEARCHER).can(permission)


def test_only_clinicians_sign_reviews() -> None:
    assert [role for role in Role if Principal("x", role).can(P.REVIEW_WRITE)] == [Role.CLINICIAN]


def test_require_names_user_role_and_permission() -> None:
    require(Principal("ann", Role.CLINICIAN), P.CASE_VIEW)
    with pytest.raises(AccessDenied) as denied:
        require(Principal("rita", Role.RESEARCHER), P.EXPORT_FHIR)
    message = str(denied.value)
    assert "rita" in message and "researcher" in message and "export.fhir" in message
    assert isinstance(denied.value, PermissionError)
    assert denied.value.permission is P.EXPORT_FHIR


def test_the_table_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        ROLE_PERMISSIONS[Role.RESEARCHER] = frozenset(Permission)  # type: ignore[index]

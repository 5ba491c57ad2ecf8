"""Roles, permissions and the principal that acts: the service layer's access rules.

Why a fixed table rather than per-user grants: who may see identifiable clinical content is a
policy decision that must be reviewable at a glance. Researchers see pseudonymous findings and
aggregates only; clinicians see a case's content; admins run the platform but do not sign
clinical reviews; ``system`` is the operator's batch jobs (ingest, training, cohort scoring).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Role(StrEnum):
    CLINICIAN = "clinician"
    RESEARCHER = "researcher"
    ADMIN = "admin"
    SYSTEM = "system"


class Permission(StrEnum):
    CASE_VIEW = "case.view"  # a case's clinical content: images, signals, values, report text
    PREDICT = "prediction.create"
    PREDICTION_READ = "prediction.read"  # findings by pseudonymous id
    SIMILAR_SEARCH = "similar.search"  # similar-case ids, scores and labels (pseudonymous)
    COHORT_SCORE = "cohort.score"
    COHORT_REPORT = "cohort.report"  # aggregates + pseudonymous exports
    EXPORT_FHIR = "export.fhir"  # a clinical document for one case
    REVIEW_WRITE = "review.write"
    AUDIT_READ = "audit.read"
    AUDIT_EXPORT = "audit.export"
    USER_MANAGE = "user.manage"
    KEY_MANAGE = "key.manage"
    INGEST = "ingest"
    TRAIN = "train"


_PSEUDONYMOUS = frozenset(
    {
        Permission.PREDICT,
        Permission.PREDICTION_READ,
        Permission.SIMILAR_SEARCH,
        Permission.COHORT_SCORE,
        Permission.COHORT_REPORT,
    }
)

ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = MappingProxyType(
    {
        Role.CLINICIAN: _PSEUDONYMOUS
        | {Permission.CASE_VIEW, Permission.EXPORT_FHIR, Permission.REVIEW_WRITE},
        Role.RESEARCHER: _PSEUDONYMOUS,
        Role.ADMIN: frozenset(Permission) - {Permission.REVIEW_WRITE},
        Role.SYSTEM: frozenset(
            {
                Permission.INGEST,
                Permission.TRAIN,
                Permission.PREDICT,
                Permission.PREDICTION_READ,
                Permission.COHORT_SCORE,
            }
        ),
    }
)


@dataclass(frozen=True)
class Principal:
    """Who acts: a signed-in user (``user_id`` set), the local operator or a batch job."""

    username: str
    role: Role
    user_id: int | None = None

    def can(self, permission: Permission) -> bool:
        return permission in ROLE_PERMISSIONS.get(self.role, frozenset())


class AccessDenied(PermissionError):  # noqa: N818 (name is the public API)
    """A principal lacks a permission; the message names the user, the role and the permission."""

    def __init__(self, username: str, role: str, permission: Permission) -> None:
        self.username, self.role, self.permission = username, role, permission
        super().__init__(
            f"access denied: user {username!r} (role {role}) lacks permission {permission.value}"
        )


def require(principal: Principal, permission: Permission) -> None:
    """Raise :class:`AccessDenied` unless ``principal`` holds ``permission``."""
    if not principal.can(permission):
        raise AccessDenied(principal.username, principal.role.value, permission)

"""Permission checks at the door of every service call, with refusals in the audit trail."""

from __future__ import annotations

from clinic.audit.chain import AuditKey, authorize
from clinic.auth.roles import AccessDenied, Permission, Principal
from clinic.store.store import Store


def guard(
    store: Store,
    principal: Principal,
    permission: Permission,
    action: str,
    resource_type: str,
    resource_id: str | None = None,
) -> None:
    """Return when ``principal`` may; otherwise commit a ``denied`` audit event and raise."""
    if principal.can(permission):
        return
    with store.session() as session:
        try:
            authorize(session, AuditKey.from_settings(store.settings), principal, permission,
                      action, resource_type, resource_id)  # fmt: skip
        except AccessDenied:
            session.commit()
            raise

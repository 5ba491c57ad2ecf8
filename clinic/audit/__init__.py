"""The tamper-evident audit trail: a keyed hash chain of events, its verification and export."""

from clinic.audit.chain import AuditKey, append_event, authorize, record

__all__ = ["AuditKey", "append_event", "authorize", "record"]

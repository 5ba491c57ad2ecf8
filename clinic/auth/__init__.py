"""Roles, permissions and users: who may do what (see :mod:`clinic.auth.roles`)."""

from clinic.auth.roles import (
    ROLE_PERMISSIONS,
    AccessDenied,
    Permission,
    Principal,
    Role,
    require,
)

__all__ = ["ROLE_PERMISSIONS", "AccessDenied", "Permission", "Principal", "Role", "require"]

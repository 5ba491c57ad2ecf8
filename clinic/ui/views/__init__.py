"""The review UI's pages and who may open each: one module per page, one ``render(ctx)`` each.

The permission here only decides what the navigation offers; every service a page calls checks
the principal again (and audits refusals), so a hand-edited URL gains nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from clinic.auth.roles import Permission, Principal
from clinic.ui.state import PageContext


@dataclass(frozen=True)
class PageSpec:
    name: str  # the ``?page=`` value
    title: str
    icon: str
    permission: Permission
    render: Callable[[PageContext], None]


def _pages() -> tuple[PageSpec, ...]:
    """Imported here, not at module level, so that ``state`` and this registry stay importable
    without the page modules' heavier imports (services, models)."""
    from clinic.ui.views import audit, case, cohorts, ingestion, models, worklist

    return (
        PageSpec(
            "worklist", "Worklist", ":material/list_alt:", Permission.CASE_VIEW, worklist.render
        ),
        PageSpec("case", "Case", ":material/person_search:", Permission.CASE_VIEW, case.render),
        PageSpec(
            "cohorts", "Cohorts", ":material/groups:", Permission.COHORT_REPORT, cohorts.render
        ),
        PageSpec(
            "models",
            "Models",
            ":material/model_training:",
            Permission.PREDICTION_READ,
            models.render,
        ),
        PageSpec(
            "ingestion", "Ingestion", ":material/upload_file:", Permission.INGEST, ingestion.render
        ),
        PageSpec("audit", "Audit", ":material/verified_user:", Permission.AUDIT_READ, audit.render),
    )


def all_pages() -> tuple[PageSpec, ...]:
    return _pages()


def allowed_pages(principal: Principal) -> list[PageSpec]:
    """The pages the navigation offers to ``principal``, in menu order."""
    return [page for page in _pages() if principal.can(page.permission)]


def find_page(name: str | None) -> PageSpec | None:
    return next((page for page in _pages() if page.name == name), None)

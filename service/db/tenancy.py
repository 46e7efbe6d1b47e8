"""Tenants: whose rows a caller reaches.

Every key belongs to a tenant, and so does every job, uploaded data set and model, set at creation
from the key (or, for a model, from its job). The repositories' read functions take the caller's
`Scope` and filter in SQL, so that another tenant's row is exactly as absent as a missing one
(a 404 with the same message: its existence is not disclosed). An admin key's scope reaches every
tenant; names (a model's `name@version`) still resolve in the caller's own tenant.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, true

from service.errors import ServiceError

DEFAULT = "default"
MAX_CHARS = 64
PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_NAME = re.compile(PATTERN)


def check_name(tenant: str) -> str:
    """The tenant name, or ServiceError `validation_error` saying what a name may be."""
    if not _NAME.match(tenant):
        raise ServiceError(
            "validation_error",
            f"tenant {tenant[:MAX_CHARS]!r} is not a tenant name: 1 to {MAX_CHARS} characters of "
            "a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
        )
    return tenant


@dataclass(frozen=True)
class Scope:
    """`tenant`: the caller's own tenant (its new rows and its names live there);
    `everyone`: it reaches every tenant's rows (admin keys, the workers)."""

    tenant: str = DEFAULT
    everyone: bool = False

    def where(self, column: Any) -> ColumnElement[bool]:
        """The SQL condition on a `tenant` column for the rows this scope reaches."""
        return true() if self.everyone else column == self.tenant  # type: ignore[no-any-return]

    def reaches(self, tenant: str) -> bool:
        return self.everyone or tenant == self.tenant

    @property
    def cache_key(self) -> str:
        """Tells scopes apart in a cache of what references resolve to."""
        return f"{'*' if self.everyone else ''}{self.tenant}"


# The service's own bookkeeping and the workers: they act on whichever tenant's rows they are given.
EVERYONE = Scope(everyone=True)

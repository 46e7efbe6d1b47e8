"""API key resources: what an admin sends to make a key, and what a key looks like (never its
secret, except in the one answer that creates it)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from service.db import tenancy
from service.db.tables import ApiKey

Scope = Literal["read", "train", "infer", "admin"]


def _printable(value: str) -> str:
    """Short text a person reads in listings and logs: no control characters (NUL included),
    no line breaks, not blank, no surrounding spaces."""
    if not value.isprintable():
        raise ValueError("must hold only printable characters (no control characters or NUL)")
    if value != value.strip() or not value:
        raise ValueError("must not be blank or start or end with a space")
    return value


KeyName = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_printable)]
TenantName = Annotated[
    str, Field(min_length=1, max_length=tenancy.MAX_CHARS, pattern=tenancy.PATTERN)
]


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"name": "acme-training", "scopes": ["read", "train"], "tenant": "acme"}]
        },
    )

    name: KeyName = "unnamed"
    scopes: list[Scope] = Field(min_length=1, max_length=4, description="read, train, infer, admin")
    tenant: TenantName = Field(
        tenancy.DEFAULT,
        description="The tenant whose jobs, data sets and models it reaches: a-z, 0-9, '.', "
        "'_' and '-'.",
    )


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="The secret's first characters, to tell keys apart.")
    scopes: list[str]
    tenant: str
    created_at: dt.datetime
    last_used_at: dt.datetime | None = Field(
        description="When it last authenticated a request (recorded at most once a minute)."
    )
    revoked_at: dt.datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The secret: shown in this answer only, never again.")


class KeyPage(BaseModel):
    items: list[KeyOut]
    next_cursor: str | None


def key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        scopes=list(key.scopes),
        tenant=key.tenant,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
    )

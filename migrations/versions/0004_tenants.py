"""tenants and sign-in sessions

Every key, job, uploaded data set and model belongs to a tenant; rows made before this revision
belong to tenant `default`. Model names (name, version) and the data set dedupe key
(sha256, label_column) become unique per tenant, so that two tenants may both own `cancer-ae`
and an upload never answers with another tenant's row. Lists filter on the tenant and page by
(created_at, id), hence the (tenant, created_at, id) indexes.

Dashboard sign-ins become server-side sessions: the cookie holds a random id, the `sessions`
table only its SHA-256, the key it signs in as, and when it expires. Sign-out deletes the row,
and so does revoking the key. Going down deletes every session.

Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"

# table -> the unique constraint that becomes per tenant: (old name, its columns)
PER_TENANT = {
    "datasets": ("uq_datasets_sha256_label_column", ["sha256", "label_column"]),
    "models": ("uq_models_name_version", ["name", "version"]),
}
LISTED = ("jobs", "datasets", "models")  # paged by (tenant, created_at, id)


def _tenant_column() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False)


def _listing_index(table: str) -> str:
    return f"ix_{table}_tenant_created_at_id"


def _tenant_unique(table: str) -> str:
    old, _ = PER_TENANT[table]
    return old.replace(f"uq_{table}_", f"uq_{table}_tenant_")


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(_tenant_column())
        batch_op.create_index("ix_api_keys_tenant", ["tenant"], unique=False)
    for table in LISTED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(_tenant_column())
            if table in PER_TENANT:
                old, columns = PER_TENANT[table]
                batch_op.drop_constraint(old, type_="unique")
                batch_op.create_unique_constraint(_tenant_unique(table), ["tenant", *columns])
            batch_op.create_index(_listing_index(table), ["tenant", "created_at", "id"])
    op.create_table(
        "sessions",
        sa.Column("id_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["api_keys.id"],
            name=op.f("fk_sessions_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id_sha256", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_key_id", ["key_id"], unique=False)
        batch_op.create_index("ix_sessions_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    # Going back to global uniqueness fails (as it should) while two tenants share a model name
    # and version or an upload; rename or delete one of them first.
    op.drop_table("sessions")  # its indexes go with it
    for table in reversed(LISTED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(_listing_index(table))
            if table in PER_TENANT:
                old, columns = PER_TENANT[table]
                batch_op.drop_constraint(_tenant_unique(table), type_="unique")
                batch_op.create_unique_constraint(old, columns)
            batch_op.drop_column("tenant")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_tenant")
        batch_op.drop_column("tenant")

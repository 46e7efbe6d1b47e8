"""tenants

Every key, job, uploaded data set and model belongs to a tenant; rows made before this revision
belong to tenant `default`. Model names (name, version) and the data set dedupe key
(sha256, label_column) become unique per tenant, so that two tenants may both own `cancer-ae`
and an upload never answers with another tenant's row. Lists filter on the tenant and page by
(created_at, id), hence the (tenant, created_at, id) indexes.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def tenant_column() -> sa.Column[str]:
    return sa.Column("tenant", sa.String(length=64), server_default="default", nullable=False)


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(tenant_column())
        batch_op.create_index("ix_api_keys_tenant", ["tenant"], unique=False)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(tenant_column())
        batch_op.create_index(
            "ix_jobs_tenant_created_at_id", ["tenant", "created_at", "id"], unique=False
        )

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(tenant_column())
        batch_op.drop_constraint("uq_datasets_sha256_label_column", type_="unique")
        batch_op.create_unique_constraint(
            "uq_datasets_tenant_sha256_label_column", ["tenant", "sha256", "label_column"]
        )
        batch_op.create_index(
            "ix_datasets_tenant_created_at_id", ["tenant", "created_at", "id"], unique=False
        )

    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.add_column(tenant_column())
        batch_op.drop_constraint("uq_models_name_version", type_="unique")
        batch_op.create_unique_constraint(
            "uq_models_tenant_name_version", ["tenant", "name", "version"]
        )
        batch_op.create_index(
            "ix_models_tenant_created_at_id", ["tenant", "created_at", "id"], unique=False
        )


def downgrade() -> None:
    # Going back to global uniqueness fails (as it should) while two tenants share a model name
    # and version or an upload; rename or delete one of them first.
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index("ix_models_tenant_created_at_id")
        batch_op.drop_constraint("uq_models_tenant_name_version", type_="unique")
        batch_op.create_unique_constraint("uq_models_name_version", ["name", "version"])
        batch_op.drop_column("tenant")

    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_index("ix_datasets_tenant_created_at_id")
        batch_op.drop_constraint("uq_datasets_tenant_sha256_label_column", type_="unique")
        batch_op.create_unique_constraint(
            "uq_datasets_sha256_label_column", ["sha256", "label_column"]
        )
        batch_op.drop_column("tenant")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_tenant_created_at_id")
        batch_op.drop_column("tenant")

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_index("ix_api_keys_tenant")
        batch_op.drop_column("tenant")

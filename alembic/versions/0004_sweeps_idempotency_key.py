"""sweeps: an idempotency key

POST /sweeps takes an Idempotency-Key header as POST /jobs does: a retried request returns the
sweep the key created first instead of queueing the grid's jobs a second time. Existing sweeps
have none (NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 11:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(
            batch_op.f("uq_sweeps_idempotency_key"), ["idempotency_key"]
        )


def downgrade() -> None:
    with op.batch_alter_table("sweeps", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_sweeps_idempotency_key"), type_="unique")
        batch_op.drop_column("idempotency_key")

"""epoch metrics: the learning rate

Each epoch's row records the lr of its last step, which moves under a job's lr_schedule. Rows
written before this revision have none (NULL).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lr", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.drop_column("lr")

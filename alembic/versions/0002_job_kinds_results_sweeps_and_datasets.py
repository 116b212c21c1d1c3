"""job kinds, results, sweeps and datasets

Jobs gain a kind (train | lr_find | kfold), a JSON result and an optional sweep; epoch metrics
may have no accuracy (regression); uploaded datasets get a table of their own.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 03:42:33.340201
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("train_examples", sa.Integer(), nullable=False),
        sa.Column("test_examples", sa.Integer(), nullable=False),
        sa.Column("input_shape", sa.JSON(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('image', 'regression')", name=op.f("ck_datasets_kind")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
    )
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.alter_column("train_acc", existing_type=sa.FLOAT(), nullable=True)
        batch_op.alter_column("val_acc", existing_type=sa.FLOAT(), nullable=True)

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Existing rows are all training jobs: the server default fills them in.
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), server_default="train", nullable=False)
        )
        batch_op.add_column(sa.Column("sweep_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("result", sa.JSON(), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_jobs_kind"), "kind IN ('train', 'lr_find', 'kfold')"
        )
        batch_op.create_index("ix_jobs_sweep_id", ["sweep_id"], unique=False)
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_sweep_id_sweeps"),
            "sweeps",
            ["sweep_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_jobs_sweep_id_sweeps"), type_="foreignkey")
        batch_op.drop_index("ix_jobs_sweep_id")
        batch_op.drop_constraint(op.f("ck_jobs_kind"), type_="check")
        batch_op.drop_column("result")
        batch_op.drop_column("sweep_id")
        batch_op.drop_column("kind")

    # The old schema cannot hold a curve without accuracy (a regression job's): drop those rows.
    op.execute("DELETE FROM epoch_metrics WHERE train_acc IS NULL OR val_acc IS NULL")
    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.alter_column("val_acc", existing_type=sa.FLOAT(), nullable=False)
        batch_op.alter_column("train_acc", existing_type=sa.FLOAT(), nullable=False)

    op.drop_table("sweeps")
    op.drop_table("datasets")

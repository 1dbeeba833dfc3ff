"""Initial schema: studies, devices, tasks, model versions, engine state,
update receipts and rejection counters.

Enum columns are plain strings (``native_enum=False``) with the values listed
here frozen at this revision; a later revision widens them if members are added.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "draft",
                "running",
                "paused",
                "stopped",
                name="studystate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("last_accuracy", sa.Double(), nullable=True),
        sa.Column("last_accuracy_version", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
    )
    op.create_table(
        "devices",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column(
            "device_class",
            sa.Enum(
                "wearable", "phone", "gateway", name="deviceclass", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=32), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "idle",
                "busy",
                "offline",
                "revoked",
                "exhausted",
                name="devicestate",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("enrolled_at", sa.Double(), nullable=False),
        sa.Column("last_seen_at", sa.Double(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_devices_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "device_id", name=op.f("pk_devices")),
    )
    op.create_table(
        "engine_state",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_engine_state_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", name=op.f("pk_engine_state")),
    )
    op.create_table(
        "model_versions",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent", sa.Integer(), nullable=True),
        sa.Column("blob_sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column(
            "strategy",
            sa.Enum(
                "fedavg",
                "fedbuff",
                "fedasync",
                "ftte",
                name="strategyname",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("lineage", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_model_versions_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "version", name=op.f("pk_model_versions")),
    )
    op.create_table(
        "rejection_counters",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column(
            "reason",
            sa.Enum(
                "unknown_task",
                "wrong_subset",
                "unexpected_tensor",
                "missing_tensor",
                "shape_mismatch",
                "non_finite",
                "too_stale",
                "bad_sample_count",
                "duplicate",
                "not_in_cohort",
                "budget_exceeded",
                "bad_privacy_claim",
                "bad_signature",
                "malformed",
                name="rejectreason",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_rejection_counters_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("study_id", "reason", name=op.f("pk_rejection_counters")),
    )
    op.create_table(
        "update_receipts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("frame_sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "merged", "buffered", "rejected", name="ackstatus", native_enum=False, length=32
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("received_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_update_receipts_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_update_receipts")),
        sa.UniqueConstraint("study_id", "task_id", name="uq_update_receipts_task"),
    )
    op.create_table(
        "tasks",
        sa.Column("study_id", sa.String(length=64), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("subset_id", sa.String(length=64), nullable=False),
        sa.Column("issued_at", sa.Double(), nullable=False),
        sa.Column("deadline_at", sa.Double(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "in_flight",
                "accepted",
                "rejected",
                "failed",
                name="taskstatus",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id", "device_id"],
            ["devices.study_id", "devices.device_id"],
            name="fk_tasks_device",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_tasks_study_id_studies"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("study_id", "task_id", name=op.f("pk_tasks")),
    )


def downgrade() -> None:
    op.drop_table("tasks")
    op.drop_table("update_receipts")
    op.drop_table("rejection_counters")
    op.drop_table("model_versions")
    op.drop_table("engine_state")
    op.drop_table("devices")
    op.drop_table("studies")

"""Datasets, their immutable versions, and resumable upload sessions with their committed segments."""

import sqlalchemy as sa
from alembic import op

revision = "dataset_0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "dataset_datasets",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("dataset_id", sa.String(63), primary_key=True),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        # Sequence number of the last version created (versions are ordered by it, newest first).
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("dataset_id", sa.String(63), primary_key=True),
        sa.Column("version_id", sa.String(16), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("statistics", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project", "dataset_id"], ["dataset_datasets.project", "dataset_datasets.dataset_id"]),
    )
    op.create_index("dataset_versions_by_seq", "dataset_versions", ["project", "dataset_id", "seq"], unique=True)
    op.create_table(
        "dataset_uploads",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("dataset_id", sa.String(63), primary_key=True),
        sa.Column("upload_id", sa.String(36), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("committed_bytes", sa.BigInteger, nullable=False),
        # Incremented by every stream that takes the session over; commits of older streams are refused.
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("expected_sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("version_id", sa.String(16), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project", "dataset_id"], ["dataset_datasets.project", "dataset_datasets.dataset_id"]),
    )
    op.create_index("dataset_uploads_by_expiry", "dataset_uploads", ["expire_time"])
    op.create_table(
        "dataset_upload_parts",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("dataset_id", sa.String(63), primary_key=True),
        sa.Column("upload_id", sa.String(36), primary_key=True),
        sa.Column("start_offset", sa.BigInteger, primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("object_key", sa.String(512), nullable=False),
        sa.ForeignKeyConstraint(["project", "dataset_id", "upload_id"],
                                ["dataset_uploads.project", "dataset_uploads.dataset_id", "dataset_uploads.upload_id"]),
    )

"""Models, versions (with labels), aliases and their history, and uploads still in flight."""

import sqlalchemy as sa
from alembic import op

revision = "registry_0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "registry_models",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("model_id", sa.String(63), primary_key=True),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("next_version", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "registry_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("labels", sa.Text, nullable=False),
        sa.Column("etag", sa.String(32), nullable=False),
        sa.Column("manifest", sa.Text, nullable=False),
        sa.Column("lineage", sa.Text, nullable=False),
        sa.Column("training_job", sa.String(128), nullable=False),
        sa.Column("training_data_sha256", sa.String(64), nullable=False),
        sa.Column("validation_data_sha256", sa.String(64), nullable=False),
        sa.Column("total_bytes", sa.BigInteger, nullable=False),
        sa.Column("object_prefix", sa.String(512), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=True),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["project", "model_id"], ["registry_models.project", "registry_models.model_id"]),
        sa.UniqueConstraint("project", "model_id", "version", name="uq_registry_versions_number"),
        sa.UniqueConstraint("project", "model_id", "request_id", name="uq_registry_versions_request"),
    )
    op.create_index("ix_registry_versions_job", "registry_versions", ["project", "training_job"])
    op.create_index("ix_registry_versions_train_sha", "registry_versions", ["project", "training_data_sha256"])
    op.create_index("ix_registry_versions_valid_sha", "registry_versions", ["project", "validation_data_sha256"])
    op.create_table(
        "registry_version_labels",
        sa.Column("version_id", sa.Integer, sa.ForeignKey("registry_versions.id"), primary_key=True),
        sa.Column("key", sa.String(63), primary_key=True),
        sa.Column("value", sa.String(63), nullable=False),
    )
    op.create_table(
        "registry_aliases",
        sa.Column("project", sa.String(63), primary_key=True),
        sa.Column("model_id", sa.String(63), primary_key=True),
        sa.Column("alias", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "registry_alias_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("model_id", sa.String(63), nullable=False),
        sa.Column("alias", sa.String(63), nullable=False),
        sa.Column("from_version", sa.Integer, nullable=True),
        sa.Column("to_version", sa.Integer, nullable=True),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registry_alias_events_model", "registry_alias_events", ["project", "model_id", "id"])
    op.create_table(
        "registry_pending_uploads",
        sa.Column("object_prefix", sa.String(512), primary_key=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )

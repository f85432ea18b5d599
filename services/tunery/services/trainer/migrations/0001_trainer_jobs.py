"""Training jobs, their event history and their checkpoints."""

import sqlalchemy as sa
from alembic import op

revision = "trainer_0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "trainer_jobs",
        sa.Column("job_id", sa.String(16), primary_key=True),
        sa.Column("project", sa.String(63), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("spec", sa.LargeBinary, nullable=False),
        sa.Column("plan", sa.LargeBinary, nullable=True),
        sa.Column("progress", sa.LargeBinary, nullable=True),
        sa.Column("error", sa.LargeBinary, nullable=True),
        sa.Column("training_version", sa.String(256), nullable=False),
        sa.Column("validation_version", sa.String(256), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("failure_count", sa.Integer, nullable=False),
        sa.Column("lost_steps", sa.BigInteger, nullable=False),
        sa.Column("worker_pid", sa.Integer, nullable=True),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("create_us", sa.BigInteger, nullable=False),
        sa.Column("start_us", sa.BigInteger, nullable=True),
        sa.Column("end_us", sa.BigInteger, nullable=True),
        sa.UniqueConstraint("project", "request_id", name="uq_trainer_jobs_request"),
    )
    op.create_index("ix_trainer_jobs_project_created", "trainer_jobs", ["project", "create_us"])
    op.create_index("ix_trainer_jobs_state", "trainer_jobs", ["state"])
    op.create_table(
        "trainer_events",
        sa.Column("job_id", sa.String(16), sa.ForeignKey("trainer_jobs.job_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("event", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "trainer_checkpoints",
        sa.Column("job_id", sa.String(16), sa.ForeignKey("trainer_jobs.job_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("checkpoint", sa.LargeBinary, nullable=False),
    )

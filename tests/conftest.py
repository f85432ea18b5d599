"""Shared fixtures: a real S3 server (SeaweedFS), SQLite and PostgreSQL databases, API keys, and
in-process Tunery services on real ports."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from tunery.services.kit.seaweed import SeaweedS3
from tunery.services.kit.settings import Settings

POSTGRES_URL = os.environ.get("TUNERY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test PostgreSQL; tests that need it fail (not skip) when it is down: CI starts it."""
    engine = sa.create_engine(POSTGRES_URL)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    engine.dispose()
    return POSTGRES_URL


def fresh_postgres_schema(base_url: str) -> str:
    """A URL whose connections live in a new, empty schema (tests never see each other's tables)."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base_url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    return f"{base_url}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """Each test using this runs twice: on a SQLite file and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tunery.db'}"
    return fresh_postgres_schema(request.getfixturevalue("postgres_url"))


@pytest.fixture
def settings(tmp_path, s3) -> Settings:
    """Settings for in-process services: SQLite under tmp_path, the session S3 server, a fresh bucket."""
    return Settings(home=tmp_path / "home", port=0, database_url=f"sqlite:///{tmp_path / 'tunery.db'}",
                    s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                    s3_bucket=f"t-{uuid.uuid4().hex[:16]}", health_interval_s=0.3, shutdown_grace_s=5.0,
                    trainer_model_cache=Path(os.environ.get("TUNERY_TEST_MODEL_CACHE", tmp_path / "models")))

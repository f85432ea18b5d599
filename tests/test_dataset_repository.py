"""The dataset service's database layer, on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tunery.services.dataset.repository import (ACTIVE, SUCCEEDED, DatasetExists, DatasetRow, PartRow, Repository,
                                                UploadRow, VersionRow)
from tunery.services.dataset.servicer import MIGRATIONS
from tunery.services.kit.db import Database
from tunery.services.kit.objects import ObjectStore

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def repo(database_url, settings):
    db = Database(database_url)
    db.migrate("dataset", MIGRATIONS)
    yield Repository(db, ObjectStore(settings))
    db.dispose()


def version(version_id: str, size: int = 10) -> VersionRow:
    return VersionRow("alpha", "d", version_id, 0, version_id * 4, size, "text", "", {}, {"examples": 1},
                      {"issues": []}, f"dataset/alpha/d/versions/{version_id}", NOW)


def session(upload_id: str = "u1", expire: datetime = NOW + timedelta(hours=1)) -> UploadRow:
    return UploadRow("alpha", "d", upload_id, ACTIVE, 0, 0, "", "", "", {"k": "v"}, None, NOW, expire)


def test_datasets_are_created_once_and_listed_in_id_order(repo):
    row, created = repo.create_dataset(DatasetRow("alpha", "d", "desc", {"a": "b"}, NOW), "r1")
    assert created and (row.description, row.labels, row.create_time) == ("desc", {"a": "b"}, NOW)
    assert repo.create_dataset(DatasetRow("alpha", "d", "other", {}, NOW), "r1") == (row, False)  # replay
    with pytest.raises(DatasetExists):
        repo.create_dataset(DatasetRow("alpha", "d", "", {}, NOW), "r2")
    for dataset_id in ("c", "b"):
        repo.create_dataset(DatasetRow("alpha", dataset_id, "", {}, NOW), "")
    repo.create_dataset(DatasetRow("beta", "a", "", {}, NOW), "")
    assert [d.dataset_id for d in repo.list_datasets("alpha", None, 10)] == ["b", "c", "d"]
    assert [d.dataset_id for d in repo.list_datasets("alpha", "b", 1)] == ["c"]


def test_versions_are_numbered_newest_first_and_counted(repo):
    repo.create_dataset(DatasetRow("alpha", "d", "", {}, NOW), "")
    for upload_id, version_id in (("u1", "aaaa"), ("u2", "bbbb"), ("u3", "cccc")):
        repo.start_upload(session(upload_id), restart=True)
        stored, created = repo.create_version(version(version_id), upload_id)
        assert created and repo.get_upload("alpha", "d", upload_id).state == SUCCEEDED
    again, created = repo.create_version(version("bbbb"), "u2")
    assert not created and again.seq == 2
    assert [v.version_id for v in repo.list_versions("alpha", "d", None, 10)] == ["cccc", "bbbb", "aaaa"]
    assert [v.version_id for v in repo.list_versions("alpha", "d", 3, 1)] == ["bbbb"]
    dataset = repo.get_dataset("alpha", "d")
    assert (dataset.latest_version, dataset.version_count) == ("cccc", 3)
    assert repo.stored_bytes("alpha") == 30 and repo.stored_bytes("beta") == 0
    repo.delete_version("alpha", "d", "cccc")
    assert repo.get_dataset("alpha", "d").latest_version == "bbbb"
    repo.delete_dataset("alpha", "d")
    assert repo.get_dataset("alpha", "d") is None and repo.get_version("alpha", "d", "aaaa") is None


def test_segments_commit_only_for_the_owning_stream_in_order(repo):
    repo.create_dataset(DatasetRow("alpha", "d", "", {}, NOW), "")
    first, parts = repo.start_upload(session(), restart=True)
    assert (first.attempt, first.committed_bytes, parts) == (1, 0, [])
    later = NOW + timedelta(hours=2)
    assert repo.commit_segment(first, PartRow(0, 5, "k0"), later)
    assert not repo.commit_segment(first, PartRow(0, 5, "k0b"), later)  # not at committed_bytes
    second, parts = repo.start_upload(session(), restart=False)  # a resumed stream takes over
    assert (second.attempt, second.committed_bytes, second.expire_time) == (2, 5, NOW + timedelta(hours=1))
    assert parts == [PartRow(0, 5, "k0")]
    assert not repo.commit_segment(first, PartRow(5, 5, "stale"), later)  # the old stream lost the session
    assert repo.commit_segment(second, PartRow(5, 3, "k5"), later)
    assert repo.committed_segments(second) == [PartRow(0, 5, "k0"), PartRow(5, 3, "k5")]
    assert repo.get_upload("alpha", "d", "u1").committed_bytes == 8
    third, parts = repo.start_upload(session(), restart=True)
    assert (third.attempt, third.committed_bytes, parts) == (3, 0, [])


def test_expired_sessions_are_found_and_deleted_unless_renewed(repo):
    repo.create_dataset(DatasetRow("alpha", "d", "", {}, NOW), "")
    old, _ = repo.start_upload(session("old", expire=NOW), restart=True)
    repo.start_upload(session("new"), restart=True)
    assert [u.upload_id for u in repo.expired_uploads(NOW)] == ["old"]
    renewed, _ = repo.start_upload(session("old"), restart=False)
    assert not repo.delete_upload_if_expired(old, NOW)  # a stream renewed it meanwhile
    assert repo.delete_upload_if_expired(renewed, NOW + timedelta(hours=1))
    assert repo.get_upload("alpha", "d", "old") is None and repo.get_upload("alpha", "d", "new") is not None

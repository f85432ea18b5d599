"""The registry's storage layer on SQLite and PostgreSQL (and the session S3 server)."""

from __future__ import annotations

import threading

import pytest

from tunery.services.kit.db import Database
from tunery.services.kit.errors import Aborted, FailedPrecondition, NotFound, ResourceExhausted
from tunery.services.kit.objects import ObjectStore
from tunery.services.registry.repository import FileEntry, NewVersion, Replayed, Repository, VersionFilter
from tunery.services.registry.servicer import MIGRATIONS

SHA = "ef" * 32


@pytest.fixture
def repo(database_url, settings):
    db = Database(database_url)
    db.migrate("registry", MIGRATIONS)
    objects = ObjectStore(settings)
    objects.ensure_bucket()
    yield Repository(db, objects)
    db.dispose()


def new_version(repo: Repository, model_id: str = "chat", labels: dict | None = None, job: str = "",
                data_sha: str = "", request_id: str | None = None, size: int = 10) -> NewVersion:
    prefix = repo.begin_upload("alpha", model_id)
    return NewVersion(description="", labels=labels or {}, files=[FileEntry("adapter_model.safetensors", size, SHA,
                                                                            "application/octet-stream")],
                      lineage={"seed": "1"}, training_job=job, training_data_sha256=data_sha,
                      validation_data_sha256="", object_prefix=prefix, request_id=request_id)


def test_numbers_are_never_reused_and_request_ids_replay(repo):
    repo.create_model("alpha", "chat", "tiny-llama", "", {}, None)
    numbers = [repo.add_version("alpha", "chat", new_version(repo), 0).version for _ in range(3)]
    assert numbers == [1, 2, 3]
    repo.delete_version("alpha", "chat", "3")
    repo.delete_version("alpha", "chat", "2")
    assert repo.add_version("alpha", "chat", new_version(repo), 0).version == 4
    first = repo.add_version("alpha", "chat", new_version(repo, request_id="r" * 36), 0)
    with pytest.raises(Replayed) as replay:
        repo.add_version("alpha", "chat", new_version(repo, request_id="r" * 36), 0)
    assert replay.value.version.version == first.version == 5
    assert repo.version_by_request("alpha", "chat", "r" * 36).id == first.id
    model = repo.get_model("alpha", "chat")
    assert (model.version_count, model.latest_version) == (3, 5)


def test_filters_order_and_cursor(repo):
    for model_id in ("chat", "code"):
        repo.create_model("alpha", model_id, "tiny-llama", "", {}, None)
    a = repo.add_version("alpha", "chat", new_version(repo, labels={"stage": "prod"}, data_sha=SHA), 0)
    b = repo.add_version("alpha", "code", new_version(repo, "code", job="projects/alpha/trainingJobs/job-1"), 0)
    c = repo.add_version("alpha", "chat", new_version(repo, labels={"stage": "prod", "x": "y"}), 0)

    def ids(model_id=None, before=None, limit=10, **where):
        return [v.id for v in repo.list_versions("alpha", model_id, VersionFilter(**where), before, limit)]
    assert ids() == [c.id, b.id, a.id]
    assert ids("chat") == [c.id, a.id]
    assert ids(before=c.id, limit=1) == [b.id]
    assert ids(labels={"stage": "prod"}) == [c.id, a.id]
    assert ids(labels={"stage": "prod", "x": "y"}) == [c.id]
    assert ids(dataset_sha256=SHA) == [a.id]
    assert ids(training_job="projects/alpha/trainingJobs/job-1") == [b.id]
    with pytest.raises(NotFound):
        ids("nope")


def test_alias_guards_history_and_concurrent_moves(repo):
    repo.create_model("alpha", "chat", "tiny-llama", "", {}, None)
    for _ in range(2):
        repo.add_version("alpha", "chat", new_version(repo), 0)
    etag = repo.set_alias("alpha", "chat", "production", "1", "", "projects/alpha/apiKeys/key-1").etag
    with pytest.raises(FailedPrecondition, match="production"):
        repo.delete_version("alpha", "chat", "1")
    with pytest.raises(NotFound):
        repo.set_alias("alpha", "chat", "staging", "9", "", "k")

    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def move(target: str) -> None:
        barrier.wait()
        try:
            repo.set_alias("alpha", "chat", "production", target, etag, "projects/alpha/apiKeys/key-1")
            outcomes.append("won")
        except Aborted:
            outcomes.append("aborted")
    threads = [threading.Thread(target=move, args=(t,)) for t in ("2", "production")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["aborted", "won"]

    events = repo.alias_events("alpha", "chat", "production", None, 10)
    assert len(events) == 2 and events[1].from_version is None and events[0].from_version == 1
    repo.delete_alias("alpha", "chat", "production", "", "k")
    assert repo.alias_events("alpha", "chat", "", None, 1)[0].to_version is None
    assert repo.delete_version("alpha", "chat", "1").startswith("registry/projects/alpha/models/chat/files/")


def test_delete_model_quota_and_pending_uploads(repo):
    repo.create_model("alpha", "chat", "tiny-llama", "", {}, None)
    kept = repo.add_version("alpha", "chat", new_version(repo, size=60), 0)
    with pytest.raises(ResourceExhausted) as caught:
        repo.add_version("alpha", "chat", new_version(repo, size=50), 100)
    assert caught.value.quota_violations[0][0] == "projects/alpha"
    assert repo.stored_bytes("alpha") == 60

    pending = repo.stale_uploads(-1)  # every upload still open: the one refused above and the helper's
    assert kept.object_prefix not in pending and len(pending) == 1
    repo.objects.put_bytes(pending[0] + "adapter_model.safetensors", b"partial")
    repo.abandon_upload(pending[0])
    assert repo.stale_uploads(-1) == [] and repo.objects.list(pending[0]) == []

    with pytest.raises(FailedPrecondition):
        repo.delete_model("alpha", "chat", force=False)
    assert repo.delete_model("alpha", "chat", force=True) == [kept.object_prefix]
    with pytest.raises(NotFound):
        repo.get_model("alpha", "chat")

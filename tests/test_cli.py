"""The `tunery` CLI as a real subprocess against real services (in this process, on free ports), with
--json output parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_sdk import HELDOUT, TRAIN, model_cache, stack

TUNERY = str(Path(sys.executable).parent / "tunery")


@pytest.fixture
def settings(settings):
    return settings.replace(trainer_model_cache=model_cache(), trainer_worker_threads=1)


class Cli:
    """Runs `tunery ...` with a TUNERY_HOME whose client.json points at the test services."""

    def __init__(self, home: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")} | {"TUNERY_HOME": str(home)}

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([TUNERY, *args], env=self.env, capture_output=True, text=True, timeout=300)
        assert (done.returncode == 0) == ok, f"tunery {' '.join(args)} -> {done.returncode}\n{done.stderr}"
        if not ok:
            assert done.stderr.startswith("error: "), done.stderr
        return done

    def json(self, *args: str):
        return json.loads(self.run(*args, "--json").stdout)

    def lines(self, *args: str) -> list[dict]:
        return [json.loads(line) for line in self.run(*args, "--json").stdout.splitlines()]


@pytest.fixture
def cli(tmp_path):
    def connect(client, services) -> Cli:
        home = tmp_path / "cli-home"
        home.mkdir()
        (home / "client.json").write_text(json.dumps({
            "targets": {name: s.address for name, s in services.items()},
            "api_key": next(iter(services.values())).key, "project": "alpha"}))
        return Cli(home)
    return connect


def test_datasets_commands(settings, cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "bot", "content": "hi"}]}\n')
    with stack(settings, "dataset") as (client, services):
        tunery = cli(client, services)
        report = tunery.json("datasets", "validate", str(TRAIN))
        assert report["ok"] and report["stats"]["examples"] == 78
        failed = tunery.run("datasets", "validate", str(bad), "--json", ok=False)
        assert json.loads(failed.stdout)["issues"][0]["line"] == 1
        assert "line 1" in tunery.run("datasets", "validate", str(bad), ok=False).stdout

        uploaded = tunery.json("datasets", "upload", str(TRAIN), "--dataset", "support", "--format", "chat")
        version = uploaded["dataset_version"]
        assert uploaded["created"] and version["statistics"]["example_count"] == "78"
        version_id = version["name"].rsplit("/", 1)[1]
        assert [d["name"] for d in tunery.json("datasets", "list")] == ["projects/alpha/datasets/support"]
        shown = tunery.json("datasets", "show", "support")
        assert [v["name"] for v in shown["versions"]] == [version["name"]]
        assert tunery.json("datasets", "show", f"support@{version_id}")["sha256"] == version["sha256"]
        out = tmp_path / "copy.jsonl"
        assert tunery.json("datasets", "download", f"support@{version_id}", "-o", str(out))["path"] == str(out)
        assert out.read_bytes() == TRAIN.read_bytes()
        assert "support" in tunery.run("datasets", "list").stdout  # the table
        assert version["sha256"] in tunery.run("datasets", "show", f"support@{version_id}").stdout
        assert "already present" in tunery.run("datasets", "upload", str(TRAIN), "--dataset", "support").stdout

        missing = tunery.run("datasets", "show", "nope", ok=False)
        assert missing.stderr.startswith("error: NOT_FOUND") and missing.stdout == ""
        tunery.run("datasets", "show", "Not_A_Name", ok=False)


def test_jobs_and_models_commands(settings, cli, tmp_path):
    with stack(settings, "dataset", "registry", "trainer") as (client, services):
        tunery = cli(client, services)
        tunery.json("datasets", "upload", str(TRAIN), "--dataset", "support")
        tunery.json("datasets", "upload", str(HELDOUT), "--dataset", "held")
        spec = ["--base-model", "tiny-llama", "--dataset", "support", "--model", "bot",
                "--validation-dataset", "held", "--epochs", "1", "--batch-size", "4", "--lora-rank", "4",
                "--sample-prompt", "My kettle leaks."]
        plan = tunery.json("jobs", "plan", *spec)
        assert plan["resolved"]["hyperparameters"]["epochs"] == 1 and plan["resolved"]["lora"]["rank"] == 4
        assert "resolved:" in tunery.run("jobs", "plan", *spec).stdout

        lines = tunery.lines("jobs", "create", *spec, "--wait")
        events, job = lines[:-1], lines[-1]
        assert [int(e["seq"]) for e in events] == list(range(1, len(events) + 1))
        assert any("step_metrics" in e for e in events) and any("evaluation" in e for e in events)
        assert job["state"] == "TRAINING_JOB_STATE_SUCCEEDED"
        job_id = job["name"].rsplit("/", 1)[1]
        assert [j["name"] for j in tunery.json("jobs", "list")] == [job["name"]]
        assert tunery.json("jobs", "list", "--state", "running") == []
        assert tunery.json("jobs", "show", job_id)["model_version"] == job["model_version"]
        watched = tunery.lines("jobs", "watch", job_id)
        assert [e["seq"] for e in watched] == [e["seq"] for e in events]  # the recorded history, replayed
        assert "FAILED_PRECONDITION" in tunery.run("jobs", "cancel", job_id, ok=False).stderr

        assert [m["name"] for m in tunery.json("models", "list")] == ["projects/alpha/models/bot"]
        assert tunery.json("models", "alias", "bot@1", "production")["aliases"]["production"] == job["model_version"]
        shown = tunery.json("models", "show", "bot:production")
        assert shown["name"] == job["model_version"] and shown["aliases"] == ["production"]
        assert shown["lineage"]["training_job"] == job["name"]
        assert len(tunery.json("models", "show", "bot")["versions"]) == 1
        folder = tmp_path / "adapter"
        tunery.json("models", "download", "bot:production", "-o", str(folder))
        assert sorted(p.name for p in folder.iterdir()) == sorted(f["path"] for f in shown["manifest"]["files"])
        for human in (["jobs", "show", job_id], ["jobs", "list"], ["jobs", "watch", job_id], ["models", "list"],
                      ["models", "show", "bot"], ["models", "show", "bot:production"], ["datasets", "show", "held"]):
            assert tunery.run(*human).stdout.strip()  # the readable renderings work too
        assert "succeeded" in tunery.run("jobs", "show", job_id).stdout
        tunery.run("models", "alias", "bot", "production", ok=False)  # no version named
        tunery.run("models", "show", "bot@7", ok=False)


def test_keys_commands_need_an_admin_key_and_show_the_secret_once(settings, tmp_path):
    with stack(settings, "dataset") as (client, services):
        dataset = services["dataset"]
        admin = dataset.service.runtime.keys.create("ops", admin=True).secret
        home = tmp_path / "admin-home"
        home.mkdir()
        (home / "client.json").write_text(json.dumps({"targets": {"dataset": dataset.address}, "api_key": admin}))
        tunery = Cli(home)
        created = tunery.json("keys", "create", "--project", "beta", "--description", "ci")
        assert created["secret"].startswith("tk_") and created["name"].startswith("projects/beta/apiKeys/key-")
        listed = tunery.json("keys", "list", "--project", "beta")
        assert [k["name"] for k in listed] == [created["name"]] and "secret" not in listed[0]
        assert created["secret"] not in tunery.run("keys", "list").stdout
        assert tunery.json("keys", "revoke", created["name"])["state"] == "REVOKED"
        # A non-admin key is refused, with the reason on stderr and a non-zero exit.
        (home / "client.json").write_text(json.dumps({"targets": {"dataset": dataset.address},
                                                      "api_key": dataset.key}))
        refused = tunery.run("keys", "list", ok=False)
        assert "PERMISSION_DENIED" in refused.stderr

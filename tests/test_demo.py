"""The local stack (`tunery up --detach`, `status`, `down`) and `tunery demo`, as a user runs them, from a
clean TUNERY_HOME. The stack listens on its fixed default ports (50050-50053), so these tests run one after
the other and always stop the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_sdk import model_cache

TUNERY = str(Path(sys.executable).parent / "tunery")


@pytest.fixture
def tunery(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNERY_")} | {
        "TUNERY_HOME": str(tmp_path / "home"), "TUNERY_TRAINER_MODEL_CACHE": str(model_cache()),
        "OMP_NUM_THREADS": "1"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([TUNERY, *args], env=env, capture_output=True, text=True, timeout=600)
        assert (done.returncode == 0) == ok, f"tunery {' '.join(args)} -> {done.returncode}\n{done.stderr[-3000:]}"
        return done

    try:
        yield run
    finally:
        subprocess.run([TUNERY, "down"], env=env, capture_output=True, timeout=180)


def test_up_status_down_from_a_clean_home(tunery, tmp_path):
    started = json.loads(tunery("up", "--detach", "--json").stdout)
    assert [c["name"] for c in started] == ["object_store", "dataset", "trainer", "registry"]
    status = json.loads(tunery("status", "--json").stdout)
    assert {row["component"]: row["health"] for row in status} == {
        "object_store": "SERVING", "dataset": "SERVING", "trainer": "SERVING", "registry": "SERVING"}
    assert json.loads((tmp_path / "home" / "client.json").read_text())["project"] == "default"
    assert json.loads(tunery("datasets", "list", "--json").stdout) == []  # the client config works
    stopped = json.loads(tunery("down", "--json").stdout)
    assert sorted(stopped["stopped"]) == ["dataset", "object_store", "registry", "trainer"]
    after = json.loads(tunery("status", "--json", ok=False).stdout)
    assert all(row["health"] == "UNREACHABLE" for row in after)


def test_demo_end_to_end_on_tiny_llama(tunery, tmp_path):
    done = tunery("demo", "--base-model", "tiny-llama", "--epochs", "1", "--samples", "2",
                  "--max-new-tokens", "8", "--json")
    summary = json.loads(done.stdout)
    assert summary["model_version"] == "projects/default/models/support-bot/versions/1"
    assert summary["heldout_loss_tuned"] < summary["heldout_loss_base"]
    assert len(summary["samples"]) == 2 and all(s["question"] for s in summary["samples"])
    adapter = Path(summary["adapter_dir"])
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert "tunery models show support-bot:production" in done.stderr  # the next commands to try
    # the stack stays up for exploring
    shown = json.loads(tunery("models", "show", "support-bot:production", "--json").stdout)
    assert shown["name"] == summary["model_version"] and shown["aliases"] == ["production"]
    again = json.loads(tunery("demo", "--base-model", "tiny-llama", "--epochs", "1", "--samples", "1",
                              "--max-new-tokens", "4", "--json").stdout)
    assert again["training_data"] == summary["training_data"]  # same bytes, same dataset version
    assert again["model_version"].endswith("/versions/2")

"""Benchmark 5 of issue 9: time from CreateTrainingJob to the first step event, tiny model.

Measured by the client (call sent → first StepMetricsEvent received on WatchTrainingJob) and by the
server's own timestamps (job create_time → event_time of that event), plus when the job reached RUNNING.
The tiny model is built into the model cache before the first run, so no run pays for building it.

    .venv/bin/python bench/job_start.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _stack import chat_examples, local_stack
from tunery.services.kit.settings import Settings
from tunery.services.trainer import base_models
from tunery.trainer.v1 import trainer_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"


def one_start(stack, training_data: str, index: int) -> dict:
    sent = time.monotonic()
    job = stack.tiny_job(training_data, model=f"start-{index}")
    created = time.monotonic()
    running_at = None
    stream = stack.jobs.WatchTrainingJob(pb.WatchTrainingJobRequest(name=job.name), metadata=stack.metadata, timeout=300)
    for message in stream:
        event = message.event
        kind = event.WhichOneof("event")
        if kind == "state_changed" and event.state_changed.state == pb.TRAINING_JOB_STATE_RUNNING:
            running_at = event.event_time.ToDatetime().timestamp()
        if kind == "state_changed" and event.state_changed.state == pb.TRAINING_JOB_STATE_FAILED:
            raise RuntimeError(f"job failed: {event.state_changed.message}")
        if kind == "step_metrics":
            received = time.monotonic()
            server = event.event_time.ToDatetime().timestamp() - job.create_time.ToDatetime().timestamp()
            stream.cancel()
            break
    stack.wait_done(job.name)  # let it finish so the next run starts on an idle trainer
    return {"create_rpc_s": created - sent, "to_first_step_s": received - sent, "server_to_first_step_s": server,
            "server_to_running_s": running_at - job.create_time.ToDatetime().timestamp() if running_at else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cache = Settings().model_cache()
    base_models.resolve_base_model(base_models.TINY_LLAMA, cache)
    with tempfile.TemporaryDirectory(prefix="tunery-bench-start-") as root, local_stack(Path(root), cache) as stack:
        training_data = stack.upload_chat("support", chat_examples(16))
        runs = [one_start(stack, training_data, i) for i in range(args.runs)]
    print(f"\n{'run':>3} {'create RPC s':>12} {'→ first step s':>15} {'server: → RUNNING s':>20} {'server: → step s':>17}")
    for i, r in enumerate(runs):
        running = f"{r['server_to_running_s']:.2f}" if r["server_to_running_s"] is not None else "-"
        print(f"{i:>3} {r['create_rpc_s']:>12.2f} {r['to_first_step_s']:>15.2f} {running:>20} {r['server_to_first_step_s']:>17.2f}")
    median = statistics.median(r["to_first_step_s"] for r in runs)
    print(f"median create → first step: {median:.2f} s (target ≤ 3 s)")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "job_start", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(),
           "load_average": os.getloadavg(), "runs": runs, "median_to_first_step_s": median}
    (RESULTS / "job_start.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'job_start.json'}")


if __name__ == "__main__":
    main()

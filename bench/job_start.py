"""Benchmark 5 of issue 9: time from CreateTrainingJob to the first step event, tiny model.

Measured by the client (call sent → first StepMetricsEvent received on WatchTrainingJob) and by the
server's own timestamps (job create_time → event_time of that event), plus when the job reached RUNNING.
The tiny model is built into the model cache before the first run, so no run pays for building it.
Two stacks run one after the other: workers started as new processes (TUNERY_TRAINER_STANDBY_WORKER=false),
then forked by the standby worker (the default). Run 0 of each stack is the first job after the service
started (the standby may still be importing); the median is over all runs.

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
    load_before = os.getloadavg()
    modes: dict[str, dict] = {}
    for mode, standby in (("new processes", False), ("standby worker", True)):
        with (tempfile.TemporaryDirectory(prefix="tunery-bench-start-") as root,
              local_stack(Path(root), cache, trainer_standby_worker=standby) as stack):
            training_data = stack.upload_chat("support", chat_examples(16))
            runs = [one_start(stack, training_data, i) for i in range(args.runs)]
        modes[mode] = {"runs": runs, "median_to_first_step_s": statistics.median(r["to_first_step_s"] for r in runs)}
    print(f"\n{'workers':<15} {'run':>3} {'create RPC s':>12} {'→ first step s':>15} {'server: → RUNNING s':>20} "
          f"{'server: → step s':>17}")
    for mode, result in modes.items():
        for i, r in enumerate(result["runs"]):
            running = f"{r['server_to_running_s']:.2f}" if r["server_to_running_s"] is not None else "-"
            print(f"{mode:<15} {i:>3} {r['create_rpc_s']:>12.2f} {r['to_first_step_s']:>15.2f} {running:>20} "
                  f"{r['server_to_first_step_s']:>17.2f}")
        print(f"{mode}: median create → first step {result['median_to_first_step_s']:.2f} s (target ≤ 3 s)")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "job_start", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(),
           "load_average": {"before": load_before, "after": os.getloadavg()}, "modes": modes}
    (RESULTS / "job_start.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / 'job_start.json'}")


if __name__ == "__main__":
    main()

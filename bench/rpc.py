"""Benchmark 4 of issue 9: QPS and p50/p99 latency of TrainerService.GetTrainingJob vs the gRPC health
Check on the same server, with 1 and 16 concurrent callers sharing one channel.

GetTrainingJob goes through everything a real call does (API-key lookup, interceptor, database read,
proto conversion); health Check is the floor a gRPC Python server gives. The job read is a finished
tiny-model job created through the API first.

    .venv/bin/python bench/rpc.py [--seconds 1] [--rounds 5]

The two RPCs alternate in short rounds and each ratio is the median of the per-round ratios, so a burst of
load from other processes on these shared machines hits one round of both rather than one whole side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from _stack import chat_examples, local_stack
from tunery.services.kit.settings import Settings
from tunery.trainer.v1 import trainer_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"


def measure(call, callers: int, seconds: float) -> tuple[float, list[float]]:
    """Each caller loops on ``call`` for ``seconds``; (QPS over all callers, every latency)."""
    latencies: list[list[float]] = [[] for _ in range(callers)]
    start = threading.Barrier(callers + 1)
    stop_at = [0.0]

    def caller(mine: list[float]) -> None:
        start.wait()
        while (now := time.perf_counter()) < stop_at[0]:
            call()
            mine.append(time.perf_counter() - now)

    threads = [threading.Thread(target=caller, args=(mine,)) for mine in latencies]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    every = [x for mine in latencies for x in mine]
    return len(every) / wall, every


def summary(rpc: str, callers: int, rounds: list[float], latencies: list[float]) -> dict:
    every = sorted(latencies)
    return {"rpc": rpc, "callers": callers, "calls": len(every), "qps": statistics.median(rounds), "qps_rounds": rounds,
            "p50_ms": 1000 * every[len(every) // 2], "p99_ms": 1000 * every[min(len(every) - 1, int(len(every) * 0.99))],
            "mean_ms": 1000 * statistics.fmean(every)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternations of the two RPCs per caller count")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="tunery-bench-rpc-") as root, \
            local_stack(Path(root), Settings().model_cache()) as stack:
        job = stack.wait_done(stack.tiny_job(stack.upload_chat("support", chat_examples(16))).name)
        # Both stubs and the metadata are made once: a stub per call registers every method of its service.
        health, jobs, metadata = health_pb2_grpc.HealthStub(stack.channels["trainer"]), stack.jobs, stack.metadata
        check = lambda: health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        get = lambda: jobs.GetTrainingJob(pb.GetTrainingJobRequest(name=job.name), metadata=metadata, timeout=10)
        check(), get()  # warm both paths
        rows = []
        for callers in (1, 16):
            qps: dict[str, list[float]] = {"health Check": [], "GetTrainingJob": []}
            latencies: dict[str, list[float]] = {"health Check": [], "GetTrainingJob": []}
            for _ in range(args.rounds):
                for name, call in (("health Check", check), ("GetTrainingJob", get)):  # alternating
                    round_qps, round_latencies = measure(call, callers, args.seconds)
                    qps[name].append(round_qps)
                    latencies[name].extend(round_latencies)
            ratios = [g / c for g, c in zip(qps["GetTrainingJob"], qps["health Check"])]
            for name in qps:
                row = summary(name, callers, qps[name], latencies[name])
                row["qps_vs_health"] = statistics.median(ratios) if name == "GetTrainingJob" else 1.0
                rows.append(row)
    print(f"\n{'rpc':<16} {'callers':>7} {'QPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'× health':>9}")
    for r in rows:
        print(f"{r['rpc']:<16} {r['callers']:>7} {r['qps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['qps_vs_health']:>9.2f}")
    RESULTS.mkdir(exist_ok=True)
    out = {"benchmark": "rpc", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(),
           "load_average": [load_before, os.getloadavg()], "seconds_per_measurement": args.seconds,
           "rounds": args.rounds, "rows": rows}
    (RESULTS / "rpc.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; wrote {RESULTS / 'rpc.json'}")


if __name__ == "__main__":
    main()

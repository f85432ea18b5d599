"""Benchmark 3 of issue 9: bytes through Tunery vs the `minio` SDK directly against the same SeaweedFS server.

* Dataset upload and download of 1 MiB, 64 MiB and 512 MiB of chat JSONL through the SDK
  (`Client.datasets.upload` / `.download`: sha256 of the file, streaming in 1 MiB chunks, the service
  validating, hashing and staging 16 MiB segments, then composing the version; the download verified
  by sha256) vs `Minio.put_object` with the same 16 MiB part size and `get_object` read in 1 MiB pieces.
* An ~80 MB LoRA adapter (peft, rank 128, every linear layer of a 16-layer Llama) downloaded through the
  registry (`Client.models.download`, every file checked against the manifest) vs `get_object` of the
  same files.
* Downloads both ways the SDK has: streamed through the service (no TUNERY_S3_PUBLIC_URL) and read from
  the presigned URLs the services hand out when it is set ("via URL"; still verified by sha256).
* The dataset service's peak RSS (VmHWM, reset before each upload) per upload size.

The dataset service runs as its own process (`python -m tunery.services dataset`, started as `tunery up`
starts it) so its memory can be read from /proc; the registry runs in this process, as in the other
benchmarks. A second dataset service and registry with a public URL serve the "via URL" downloads (same
database and bucket). The runs alternate, three of each; the table shows medians.

    .venv/bin/python bench/bytes_paths.py [--quick]      # --quick: 1 MiB and 64 MiB only
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from minio import Minio

from _stack import PARENT, local_stack
from tunery.client import Client
from tunery.services import stack as tunery_stack
from tunery.services.kit.objects import PART_SIZE, READ_SIZE
from tunery.services.kit.seaweed import free_port
from tunery.services.kit.server import Service
from tunery.services.registry import servicer as registry_servicer
from tunery.services.kit.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
MIB = 1024 * 1024
REPEATS = 3
ADAPTER_BASE = "bench-llama-512"  # the adapter's base model: a 16-layer Llama, hidden size 512, built here

TOPICS = ["order", "invoice", "refund", "password", "delivery", "subscription", "warranty", "address"]
USER = ["Hello, I have a question about my {t} {n}. It was placed last week and I still have not heard back.",
        "Can you check {t} {n} for me? The tracking page shows nothing since Tuesday and I am getting worried.",
        "My {t} {n} looks wrong: the amount differs from what the checkout page showed me before I paid."]
ASSISTANT = ["Thanks for reaching out about {t} {n}. I looked it up: it was processed on Monday and the "
             "carrier confirmed pickup, so it should arrive within three working days.",
             "I am sorry about the trouble with {t} {n}. I have opened a ticket with our billing team; you "
             "will receive a corrected statement and any difference is refunded within five days.",
             "I checked {t} {n}: everything is in order on our side. If nothing changes by Friday, reply to "
             "this message and I will escalate it to the warehouse right away."]


def write_jsonl(path: Path, size: int, seed: int = 0) -> int:
    """Unique, valid chat examples (~0.5–1.5 KB a line) up to `size` bytes; returns the lines written."""
    rng = random.Random(seed)
    written = lines = 0
    with open(path, "w", encoding="utf-8") as out:
        while True:
            turns = []
            for _ in range(rng.randint(1, 3)):
                values = {"t": rng.choice(TOPICS), "n": f"#{lines:08d}-{rng.randrange(10 ** 6):06d}"}
                turns += [{"role": "user", "content": rng.choice(USER).format(**values)},
                          {"role": "assistant", "content": rng.choice(ASSISTANT).format(**values)}]
            line = json.dumps({"messages": turns}) + "\n"
            if written + len(line) > size:
                return lines
            out.write(line)
            written += len(line)
            lines += 1


def build_adapter(directory: Path) -> int:
    """A LoRA adapter saved by peft (rank 128 on every linear layer of a 16-layer Llama); returns its bytes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(hidden_size=512, intermediate_size=1408, num_hidden_layers=16,
                                        num_attention_heads=8, num_key_value_heads=8, vocab_size=256))
    model = get_peft_model(base, LoraConfig(r=128, lora_alpha=256, target_modules="all-linear",
                                            init_lora_weights=False))
    model.save_pretrained(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = ADAPTER_BASE  # the registry checks it against the model's base
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return sum(p.stat().st_size for p in directory.iterdir())


def timed(action: Callable[[], object]) -> float:
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def rss_mb(pid: int, field: str = "VmHWM") -> float:
    """A memory field of /proc/<pid>/status in MB: VmHWM (peak resident set) or VmRSS (resident now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no {field} for pid {pid}")


def reset_peak_rss(pid: int) -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs); False if the kernel refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def start_dataset_service(settings: Settings, log: Path) -> tunery_stack.Component:
    """`python -m tunery.services dataset` on a free port, with the environment `tunery up` gives it."""
    port = free_port()
    env = os.environ | tunery_stack._environment(settings) | {"TUNERY_PORT": str(port), "TUNERY_LOG_FORMAT": "json"}
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "tunery.services", "dataset"], env=env, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    component = tunery_stack.Component("dataset", f"127.0.0.1:{port}", process.pid, str(log))
    try:
        tunery_stack._wait_serving(component, timeout_s=120)
    except BaseException:
        tunery_stack.stop([component])
        raise
    return component


def direct_get(s3: Minio, bucket: str, key: str, path: Path) -> None:
    """get_object read in the service's read size, written to a file."""
    response = s3.get_object(bucket, key)
    try:
        with open(path, "wb") as out:
            for piece in response.stream(READ_SIZE):
                out.write(piece)
    finally:
        response.close()
        response.release_conn()


def row(path: str, operation: str, size: int, tunery_s: list[float], direct_s: list[float], **extra) -> dict:
    t, d = statistics.median(tunery_s), statistics.median(direct_s)
    return {"path": path, "operation": operation, "bytes": size, "tunery_s": tunery_s, "direct_s": direct_s,
            "tunery_mb_s": size / 1e6 / t, "direct_mb_s": size / 1e6 / d, "ratio": d / t, **extra}


def bench_dataset(client: Client, via_url: Client, s3: Minio, bucket: str, work: Path, size_mib: int,
                  pid: int) -> list[dict]:
    data = work / f"data-{size_mib}.jsonl"
    examples = write_jsonl(data, size_mib * MIB, seed=size_mib)
    size = data.stat().st_size
    up_t, up_d, peaks, version = [], [], [], None
    for rep in range(REPEATS):  # a new dataset each time, so every upload creates (and composes) a version
        dataset = f"bytes-{size_mib}-{rep}"
        client.datasets.create(dataset)
        windowed = reset_peak_rss(pid)
        up_t.append(timed(lambda: client.datasets.upload(data, dataset=dataset, format="chat",
                                                         create_dataset=False)))
        peaks.append(rss_mb(pid))
        if version is None:
            version = client.datasets.get_version(dataset)
        with open(data, "rb") as f:
            up_d.append(timed(lambda: s3.put_object(bucket, f"direct/{size_mib}/{rep}.jsonl", f, size,
                                                    part_size=PART_SIZE)))
    down_t, down_u, down_d = [], [], []
    target = work / "download.jsonl"
    for rep in range(REPEATS):
        for times, fetch in ((down_t, lambda: client.datasets.download(version.name, target)),
                             (down_u, lambda: via_url.datasets.download(version.name, target)),
                             (down_d, lambda: direct_get(s3, bucket, f"direct/{size_mib}/{rep}.jsonl", target))):
            times.append(timed(fetch))
            assert target.stat().st_size == size
            target.unlink()
    data.unlink()
    label = f"dataset {size_mib} MiB"
    return [row(label, "upload", size, up_t, up_d, examples=examples, service_peak_rss_mb=max(peaks),
                peak_rss_windowed=windowed),
            row(label, "download", size, down_t, down_d, examples=examples),
            row(label, "via URL", size, down_u, down_d, examples=examples)]


def bench_adapter(client: Client, via_url: Client, s3: Minio, bucket: str, work: Path) -> list[dict]:
    adapter = work / "adapter"
    size = build_adapter(adapter)
    client.models.create("bytes-adapter", base_model=ADAPTER_BASE)
    version = client.models.upload("bytes-adapter", adapter)
    files = sorted(p.name for p in adapter.iterdir())
    for name in files:
        s3.fput_object(bucket, f"direct/adapter/{name}", str(adapter / name))
    tunery_s, url_s, direct_s = [], [], []
    target = work / "adapter-download"
    for _ in range(REPEATS):
        tunery_s.append(timed(lambda: client.models.download(version.name, target)))
        shutil.rmtree(target)
        url_s.append(timed(lambda: via_url.models.download(version.name, target)))
        shutil.rmtree(target)
        target.mkdir()
        direct_s.append(timed(lambda: [direct_get(s3, bucket, f"direct/adapter/{n}", target / n) for n in files]))
        shutil.rmtree(target)
    return [row("adapter (registry)", "download", size, tunery_s, direct_s, files=files),
            row("adapter (registry)", "via URL", size, url_s, direct_s, files=files)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 MiB and 64 MiB only")
    args = parser.parse_args()
    sizes = (1, 64) if args.quick else (1, 64, 512)
    load_before = os.getloadavg()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="tunery-bench-bytes-") as root, \
            local_stack(Path(root), Settings().model_cache(), names=("registry",)) as stack:
        work = Path(root)
        settings, project = stack.settings, PARENT.split("/")[1]
        public = settings.replace(s3_public_url=f"http://{stack.s3.endpoint}")
        dataset = start_dataset_service(settings, work / "dataset.log")
        dataset_url = start_dataset_service(public, work / "dataset-url.log")
        registry_url = Service("registry", public, registry_servicer.MIGRATIONS, registry_servicer.setup).start()
        try:
            client = Client(targets={"dataset": dataset.address, "registry": stack.services["registry"].address},
                            api_key=stack.key, project=project)
            via_url = Client(targets={"dataset": dataset_url.address, "registry": registry_url.address},
                             api_key=stack.key, project=project)
            s3 = Minio(stack.s3.endpoint, access_key=stack.s3.access_key, secret_key=stack.s3.secret_key,
                       secure=False)
            idle_rss = rss_mb(dataset.pid, "VmRSS")
            for size_mib in sizes:
                rows += bench_dataset(client, via_url, s3, settings.s3_bucket, work, size_mib, dataset.pid)
                print(f"dataset {size_mib} MiB done", file=sys.stderr)
            rows += bench_adapter(client, via_url, s3, settings.s3_bucket, work)
            client.close()
            via_url.close()
        finally:
            registry_url.stop(0)
            tunery_stack.stop([dataset, dataset_url])
    print(f"\n{'path':<20} {'operation':<9} {'MB':>7} {'Tunery MB/s':>12} {'direct MB/s':>12} {'ratio':>6} "
          f"{'service peak RSS':>17}")
    for r in rows:
        rss = f"{r['service_peak_rss_mb']:.0f} MB" if "service_peak_rss_mb" in r else ""
        print(f"{r['path']:<20} {r['operation']:<9} {r['bytes'] / 1e6:>7.1f} {r['tunery_mb_s']:>12.1f} "
              f"{r['direct_mb_s']:>12.1f} {r['ratio']:>6.2f} {rss:>17}")
    print(f"dataset service RSS when idle: {idle_rss:.0f} MB")
    RESULTS.mkdir(exist_ok=True)
    name = "bytes_paths-quick.json" if args.quick else "bytes_paths.json"
    out = {"benchmark": "bytes_paths", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cores": os.cpu_count(),
           "load_average_before": load_before, "load_average_after": os.getloadavg(), "repeats": REPEATS,
           "part_size": PART_SIZE, "read_size": READ_SIZE, "dataset_service_idle_rss_mb": idle_rss, "rows": rows}
    (RESULTS / name).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS / name}")


if __name__ == "__main__":
    main()

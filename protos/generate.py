"""Generate the Python code of the Tunery API from protos/ (the one codegen script).

Runs grpc_tools.protoc with ``-I protos`` on every ``.proto`` under ``protos/tunery`` and writes
``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` into ``clients/python/src`` (modules such as
``tunery.dataset.v1.dataset_pb2``). The generated files are committed; ``--check`` regenerates into a
temporary folder and exits 1, naming the stale files, when the committed ones differ.

Usage::

    .venv/bin/python protos/generate.py          # write the generated code
    .venv/bin/python protos/generate.py --check  # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import filecmp
import importlib.resources
import re
import shutil
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PROTO_ROOT.parent
OUTPUT_ROOT = REPO_ROOT / "clients" / "python" / "src"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[str]:
    """Return every .proto of the API, relative to protos/, sorted (so output never depends on disk order)."""
    return sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "tunery").rglob("*.proto"))


def _run_protoc(extra_args: list[str]) -> None:
    """Run protoc in-process with the API and the well-known types on the include path."""
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *extra_args, *proto_files()]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


# grpcio-tools also writes a `FooServiceServicer` base class whose methods answer UNIMPLEMENTED. Tunery's
# servicers implement every RPC and are registered with `add_FooServiceServicer_to_server`, which fails at
# start on a missing method, so the base classes are dropped rather than shipped as stubs.
_SERVICER_BASE = re.compile(r"^class \w+Servicer(\(object\))?:\n.*?(?=^def add_)", re.M | re.S)


def generate(output_root: Path) -> None:
    """Write the generated Python modules for every proto under ``output_root``."""
    output_root.mkdir(parents=True, exist_ok=True)
    _run_protoc([f"--python_out={output_root}", f"--pyi_out={output_root}", f"--grpc_python_out={output_root}"])
    for module in output_root.rglob("*_pb2_grpc.py"):
        module.write_text(_SERVICER_BASE.sub("", module.read_text()))


def generated_files(root: Path) -> set[str]:
    """Return the generated files below ``root/tunery``, as paths relative to ``root``."""
    tunery = root / "tunery"
    if not tunery.is_dir():
        return set()
    return {
        p.relative_to(root).as_posix()
        for p in tunery.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def stale_files(output_root: Path = OUTPUT_ROOT) -> list[str]:
    """Regenerate into a temporary folder; return the files under ``output_root`` that are missing,
    differ, or are left over from a proto that no longer exists (empty when all is current)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, current = generated_files(fresh_root), generated_files(output_root)
        stale = {f for f in fresh ^ current}
        stale |= {f for f in fresh & current if not filecmp.cmp(fresh_root / f, output_root / f, shallow=False)}
    return sorted(stale)


def write(output_root: Path = OUTPUT_ROOT) -> list[str]:
    """Bring the generated code under ``output_root`` up to date; return the files changed or removed."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, current = generated_files(fresh_root), generated_files(output_root)
        changed = []
        for name in sorted(fresh):
            target = output_root / name
            if name not in current or not filecmp.cmp(fresh_root / name, target, shallow=False):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fresh_root / name, target)
                changed.append(name)
        for name in sorted(current - fresh):
            (output_root / name).unlink()
            changed.append(name)
    return changed


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Compile every proto (with imports and source comments) into a FileDescriptorSet, for tests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "api.binpb"
        _run_protoc(["--include_imports", "--include_source_info", f"--descriptor_set_out={out}"])
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed generated code is stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated files (run protos/generate.py):", *stale, sep="\n  ", file=sys.stderr)
            return 1
        print("generated code is up to date")
        return 0
    for name in write():
        print(f"updated {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

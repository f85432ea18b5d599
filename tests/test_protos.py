"""The v1 API protos: buf lint, generated code up to date, every element documented, AIP conventions."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[1]
PROTOS = REPO / "protos"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"

# Field numbers in descriptor.proto, used to build source_code_info paths.
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MESSAGE_FIELD, MESSAGE_NESTED, MESSAGE_ENUM, MESSAGE_ONEOF = 2, 3, 4, 8
ENUM_VALUE, SERVICE_METHOD = 2, 2


def _load_generate() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tunery_protos_generate", PROTOS / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


@pytest.fixture(scope="module")
def api_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The Tunery files of the API (imports such as google/protobuf/* left out)."""
    files = [f for f in generate.descriptor_set().file if f.name.startswith("tunery/")]
    assert {f.package for f in files} >= {"tunery.common.v1", "tunery.dataset.v1", "tunery.trainer.v1",
                                           "tunery.registry.v1"}
    return files


def _methods(files):
    messages = {f".{f.package}.{m.name}": m for f in files for m in f.message_type}
    for f in files:
        for service in f.service:
            for method in service.method:
                yield service, method, messages[method.input_type], messages[method.output_type]


def test_buf_lint_passes() -> None:
    if not BUF.exists():
        pytest.fail(f"buf is missing at {BUF}: run `npm install --prefix {REPO / '.tools'} @bufbuild/buf`")
    result = subprocess.run([str(BUF), "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"


def test_generated_code_is_current() -> None:
    assert generate.stale_files() == [], "generated code is stale: run .venv/bin/python protos/generate.py"


def test_stale_check_names_changed_missing_and_leftover_files(tmp_path: Path) -> None:
    shutil.copytree(generate.OUTPUT_ROOT / "tunery", tmp_path / "tunery",
                    ignore=lambda _dir, names: [n for n in names if not n.endswith(generate.GENERATED_SUFFIXES)
                                                and not (Path(_dir) / n).is_dir()])
    assert generate.stale_files(tmp_path) == []
    changed = tmp_path / "tunery/dataset/v1/dataset_pb2.py"
    changed.write_text(changed.read_text() + "\n")
    (tmp_path / "tunery/trainer/v1/trainer_pb2.pyi").unlink()
    (tmp_path / "tunery/dataset/v1/removed_pb2.py").write_text("")
    assert generate.stale_files(tmp_path) == ["tunery/dataset/v1/dataset_pb2.py", "tunery/dataset/v1/removed_pb2.py",
                                              "tunery/trainer/v1/trainer_pb2.pyi"]
    assert generate.write(tmp_path) == ["tunery/dataset/v1/dataset_pb2.py", "tunery/trainer/v1/trainer_pb2.pyi",
                                        "tunery/dataset/v1/removed_pb2.py"]
    assert generate.stale_files(tmp_path) == []


def _undocumented(file: descriptor_pb2.FileDescriptorProto) -> list[str]:
    """Names of the messages, fields, oneofs, enums, enum values, services and RPCs without a leading comment."""
    comments = {tuple(loc.path): loc.leading_comments.strip() for loc in file.source_code_info.location}
    missing: list[str] = []

    def check(path: tuple[int, ...], what: str) -> None:
        if not comments.get(path):
            missing.append(f"{file.name}: {what}")

    def walk_enum(enum: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        check(path, f"enum {prefix}{enum.name}")
        for i, value in enumerate(enum.value):
            check(path + (ENUM_VALUE, i), f"enum value {prefix}{enum.name}.{value.name}")

    def walk_message(message: descriptor_pb2.DescriptorProto, path: tuple[int, ...], prefix: str) -> None:
        full = f"{prefix}{message.name}"
        if message.options.map_entry:  # synthesized for map<,> fields; documented by the field
            return
        check(path, f"message {full}")
        for i, field in enumerate(message.field):
            check(path + (MESSAGE_FIELD, i), f"field {full}.{field.name}")
        for i, oneof in enumerate(message.oneof_decl):
            if not oneof.name.startswith("_"):  # proto3 `optional` synthesizes "_field" oneofs
                check(path + (MESSAGE_ONEOF, i), f"oneof {full}.{oneof.name}")
        for i, nested in enumerate(message.nested_type):
            walk_message(nested, path + (MESSAGE_NESTED, i), f"{full}.")
        for i, enum in enumerate(message.enum_type):
            walk_enum(enum, path + (MESSAGE_ENUM, i), f"{full}.")

    for i, message in enumerate(file.message_type):
        walk_message(message, (FILE_MESSAGE, i), "")
    for i, enum in enumerate(file.enum_type):
        walk_enum(enum, (FILE_ENUM, i), "")
    for i, service in enumerate(file.service):
        check((FILE_SERVICE, i), f"service {service.name}")
        for j, method in enumerate(service.method):
            check((FILE_SERVICE, i, SERVICE_METHOD, j), f"rpc {service.name}.{method.name}")
    return missing


def test_every_element_has_a_leading_comment(api_files) -> None:
    missing = [m for f in api_files for m in _undocumented(f)]
    assert missing == [], "undocumented:\n" + "\n".join(missing)


def test_comment_check_catches_an_undocumented_field(api_files) -> None:
    file = descriptor_pb2.FileDescriptorProto()
    file.CopyFrom(api_files[0])
    file.message_type[0].field.add(name="undocumented_field", number=999, type=9)
    assert _undocumented(file) == [f"{file.name}: field {file.message_type[0].name}.undocumented_field"]


def test_creates_take_request_id_and_lists_paginate(api_files) -> None:
    problems = []
    string, int32 = descriptor_pb2.FieldDescriptorProto.TYPE_STRING, descriptor_pb2.FieldDescriptorProto.TYPE_INT32
    for service, method, request, response in _methods(api_files):
        req = {f.name: f.type for f in request.field}
        rpc = f"{service.name}.{method.name}"
        if method.name.startswith("Create") and req.get("request_id") != string:
            problems.append(f"{rpc}: request has no string request_id")
        if method.name.startswith("List"):
            if req.get("page_size") != int32 or req.get("page_token") != string:
                problems.append(f"{rpc}: request needs int32 page_size and string page_token")
            if {f.name: f.type for f in response.field}.get("next_page_token") != string:
                problems.append(f"{rpc}: response has no string next_page_token")
    assert problems == [], "\n".join(problems)


def test_streaming_uploads_carry_request_id_in_their_header(api_files) -> None:
    messages = {f".{f.package}.{m.name}": m for f in api_files for m in f.message_type}
    uploads = [(m, req) for _s, m, req, _r in _methods(api_files) if m.name.startswith("Upload")]
    assert {m.name for m, _ in uploads} == {"UploadDatasetVersion", "UploadModelVersion"}
    for method, request in uploads:
        assert method.client_streaming
        header = next(f for f in request.field if f.name == "header")
        assert "request_id" in {f.name for f in messages[header.type_name].field}, method.name


def test_resource_name_is_the_first_field(api_files) -> None:
    wrong = [f"{f.name}: {m.name}" for f in api_files for m in f.message_type
             if any(fd.name == "name" for fd in m.field) and (m.field[0].name != "name" or m.field[0].number != 1)]
    assert wrong == []

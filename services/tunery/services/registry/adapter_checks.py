"""Pure checks of the files of an adapter version: names, formats, the safetensors header and the LoRA config.

Nothing here touches the network, the database or the object store, and nothing is ever unpickled: a file is
accepted only when its bytes are JSON, UTF-8 text, a safetensors file whose header we parse ourselves, or a
sentencepiece model (protobuf), and any file starting like a pickle or a zip archive (torch.save) is refused.
Checks are fed chunk by chunk, so a file is judged while it streams and never held in memory whole
(JSON files excepted, which are bounded).
"""

from __future__ import annotations

import codecs
import json
import re
import struct
from dataclasses import dataclass
from typing import Any

from tunery.services.kit.errors import InvalidArgument

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
REQUIRED = (CONFIG, WEIGHTS)

# Extension → media type. Anything else is refused; weights only as safetensors.
MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".json": "application/json",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".jinja": "text/plain",
    ".model": "application/octet-stream",  # sentencepiece tokenizer (a protobuf)
}
# Weight and archive formats that load through pickle (or may): named so the error says why.
PICKLE_EXTENSIONS = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".zip")
# Pickle protocols 2-5 start with PROTO (0x80) and the protocol number; torch.save writes a zip archive.
PICKLE_MAGIC = tuple(bytes([0x80, n]) for n in range(2, 6))
ZIP_MAGIC = b"PK\x03\x04"
SNIFF_BYTES = 8

SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
SHA256 = re.compile(r"[0-9a-f]{64}")
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
               "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# Tensor name suffixes peft writes for LoRA layers (DoRA magnitudes and LoRA biases included).
LORA_TENSOR = re.compile(r"(?P<module>.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
                         r"(\.(weight|bias))?")
PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int  # safetensors JSON header
    max_json_bytes: int  # any .json file


def check_path(path: str, field_name: str) -> str:
    """A plain relative path: a file name, or one folder and a file name; the media type it gets."""
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument.field(field_name, f"{path!r} {why}", "INVALID_FILE_PATH")

    if not path:
        raise bad("is empty: give the file's relative path, e.g. adapter_config.json")
    if "\x00" in path:
        raise bad("contains a NUL character")
    if path.startswith("/") or "\\" in path or re.match(r"[A-Za-z]:", path):
        raise bad("is not a relative path: use '/'-separated names without a leading '/'")
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise bad("has an empty, '.' or '..' segment")
    if len(segments) > 2:
        raise bad("is nested too deep: at most one folder, e.g. tokenizer/vocab.json")
    if not all(SEGMENT.fullmatch(s) for s in segments):
        raise bad("uses characters outside letters, digits, '.', '_' and '-' (or starts with '.' or '-')")
    lower = path.lower()
    if lower.endswith(PICKLE_EXTENSIONS):
        raise InvalidArgument.field(field_name, f"{path!r}: weights and archives are accepted only as safetensors "
                                                f"(convert with safetensors.torch.save_file)", "UNSAFE_FILE_FORMAT")
    extension = lower[lower.rfind("."):] if "." in segments[-1] else ""
    if extension not in MEDIA_TYPES:
        raise InvalidArgument.field(field_name, f"{path!r} has an unsupported type; accepted: "
                                                f"{', '.join(sorted(MEDIA_TYPES))}", "UNSUPPORTED_FILE_TYPE")
    if extension == ".safetensors" and path != WEIGHTS:
        raise InvalidArgument.field(field_name, f"{path!r}: the adapter weights must be named {WEIGHTS}",
                                    "UNSUPPORTED_FILE_TYPE")
    return MEDIA_TYPES[extension]


def check_sha256(value: str, field_name: str) -> str:
    if not SHA256.fullmatch(value or ""):
        raise InvalidArgument.field(field_name, "must be 64 lower-case hex characters (a sha256)", "INVALID_DIGEST")
    return value


@dataclass
class FileResult:
    """What a file revealed: the parsed config, or the tensor names of the weights."""

    path: str
    config: dict[str, Any] | None = None
    tensor_names: list[str] | None = None


class FileCheck:
    """Judges one file from its chunks. `feed` every chunk, then `finish`; both raise INVALID_ARGUMENT."""

    def __init__(self, path: str, size: int, field_name: str, limits: Limits) -> None:
        self.path, self.size, self.field, self.limits = path, size, field_name, limits
        self.extension = path[path.rfind("."):].lower()
        self._seen = 0
        self._first = b""  # the first bytes, to recognise pickles and zip archives
        self._head = bytearray()  # the safetensors header, or a whole JSON file
        self._header_len: int | None = None
        self._tensor_names: list[str] | None = None
        self._text = codecs.getincrementaldecoder("utf-8")() if self.extension in (".md", ".txt", ".jinja") else None
        if self.extension == ".json" and size > limits.max_json_bytes:
            raise self._bad(f"is {size} bytes; JSON files may have at most {limits.max_json_bytes}", "FILE_TOO_LARGE")

    def _bad(self, why: str, reason: str = "INVALID_FILE_CONTENT") -> InvalidArgument:
        return InvalidArgument.field(self.field, f"{self.path}: {why}", reason)

    def feed(self, chunk: bytes) -> None:
        start = self._seen
        self._seen += len(chunk)
        if self._seen > self.size:
            raise self._bad(f"has more than the declared {self.size} bytes", "SIZE_MISMATCH")
        if start < SNIFF_BYTES:
            self._first += chunk[:SNIFF_BYTES - start]
            # A safetensors length prefix may begin like a pickle; its header check judges it instead.
            if self.extension != ".safetensors":
                self._sniff()
        if self._text is not None:
            self._decode(chunk, final=False)
        elif self.extension == ".json":
            self._head += chunk
        elif self.extension == ".safetensors":
            try:
                self._feed_safetensors(chunk)
            except InvalidArgument:
                self._sniff()  # say "pickle" when that is what failed to parse
                raise

    def _sniff(self) -> None:
        if self._first.startswith(PICKLE_MAGIC) or self._first.startswith(ZIP_MAGIC):
            raise self._bad("is a pickle or zip archive (e.g. torch.save output); weights are accepted only as "
                            "safetensors and nothing is ever unpickled", "UNSAFE_FILE_FORMAT")

    def _decode(self, chunk: bytes, final: bool) -> None:
        try:
            self._text.decode(chunk, final)
        except UnicodeDecodeError as error:
            raise self._bad(f"is not valid UTF-8 text ({error.reason})") from None

    def _feed_safetensors(self, chunk: bytes) -> None:
        if self._tensor_names is not None:
            return  # header parsed; the rest is tensor data, checked for length at the end
        self._head += chunk
        if self._header_len is None:
            if len(self._head) < 8:
                return
            (self._header_len,) = struct.unpack("<Q", bytes(self._head[:8]))
            if self._header_len > self.limits.max_header_bytes:
                raise self._bad(f"the safetensors header claims {self._header_len} bytes; at most "
                                f"{self.limits.max_header_bytes} are accepted", "SAFETENSORS_HEADER_TOO_LARGE")
            if self._header_len < 2 or 8 + self._header_len > self.size:
                raise self._bad(f"the safetensors header length {self._header_len} does not fit a file of "
                                f"{self.size} bytes", "INVALID_SAFETENSORS")
        if len(self._head) >= 8 + self._header_len:
            header = bytes(self._head[8:8 + self._header_len])
            self._head = bytearray()
            self._tensor_names = self._parse_safetensors_header(header, self.size - 8 - self._header_len)

    def _parse_safetensors_header(self, raw: bytes, data_size: int) -> list[str]:
        header = _load_json(raw, lambda why: self._bad(f"the safetensors header is not valid JSON ({why})",
                                                         "INVALID_SAFETENSORS"))
        if not isinstance(header, dict):
            raise self._bad("the safetensors header is not a JSON object", "INVALID_SAFETENSORS")
        metadata = header.pop("__metadata__", {})
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._bad("__metadata__ must map strings to strings", "INVALID_SAFETENSORS")
        spans = []
        for name, info in header.items():
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise self._bad(f"tensor {name!r} needs exactly dtype, shape and data_offsets", "INVALID_SAFETENSORS")
            dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
            if dtype not in DTYPE_BYTES or not _ints(shape) or not _ints(offsets) or len(offsets) != 2:
                raise self._bad(f"tensor {name!r} has an invalid dtype, shape or data_offsets", "INVALID_SAFETENSORS")
            count = 1
            for dim in shape:
                count *= dim
            begin, end = offsets
            if not 0 <= begin <= end <= data_size or end - begin != count * DTYPE_BYTES[dtype]:
                raise self._bad(f"tensor {name!r} has data_offsets that do not match its shape or the file size",
                                "INVALID_SAFETENSORS")
            spans.append((begin, end))
        position = 0  # tensors must tile the data exactly: no holes, no overlaps, nothing after
        for begin, end in sorted(spans):
            if begin != position:
                raise self._bad("tensor data regions overlap or leave gaps", "INVALID_SAFETENSORS")
            position = end
        if position != data_size:
            raise self._bad(f"the tensors cover {position} bytes but the file holds {data_size}",
                            "INVALID_SAFETENSORS")
        return sorted(header)

    def finish(self) -> FileResult:
        if self._seen != self.size:
            raise self._bad(f"has {self._seen} bytes, not the declared {self.size}", "SIZE_MISMATCH")
        if self._text is not None:
            self._decode(b"", final=True)
        if self.extension == ".safetensors" and self._tensor_names is None:
            self._sniff()
            raise self._bad("is too short to be a safetensors file", "INVALID_SAFETENSORS")
        if self.extension == ".safetensors":
            return FileResult(self.path, tensor_names=self._tensor_names)
        if self.extension == ".json":
            value = _load_json(bytes(self._head), lambda why: self._bad(f"is not valid JSON ({why})"))
            return FileResult(self.path, config=value if self.path == CONFIG else None)
        return FileResult(self.path)


def check_adapter(results: dict[str, FileResult], base_model: str, field_of: dict[str, str]) -> None:
    """The version as a whole: config and weights present, a LoRA config naming `base_model`, and every
    tensor belonging to one of the config's target modules (or modules_to_save)."""
    for required in REQUIRED:
        if required not in results:
            raise InvalidArgument.field("files", f"{required} is missing: a version needs {' and '.join(REQUIRED)}",
                                        "MISSING_FILE")
    config, where = results[CONFIG].config, field_of[CONFIG]

    def bad(why: str, reason: str = "INVALID_ADAPTER_CONFIG") -> InvalidArgument:
        return InvalidArgument.field(where, f"{CONFIG}: {why}", reason)

    if not isinstance(config, dict):
        raise bad("must be a JSON object")
    if config.get("peft_type") != "LORA":
        raise bad(f"peft_type is {config.get('peft_type')!r}; only LoRA adapters (\"LORA\") are accepted")
    if config.get("base_model_name_or_path") != base_model:
        raise bad(f"base_model_name_or_path is {config.get('base_model_name_or_path')!r} but the model's base "
                  f"model is {base_model!r}", "BASE_MODEL_MISMATCH")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise bad("r must be a positive integer")
    targets = config.get("target_modules")
    if not (isinstance(targets, str) and targets) and not (
            isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise bad("target_modules must be a non-empty list of module names or a regular expression")
    to_save = config.get("modules_to_save") or []
    if not isinstance(to_save, list) or not all(isinstance(m, str) for m in to_save):
        raise bad("modules_to_save must be a list of module names")

    names = results[WEIGHTS].tensor_names or []
    lora = 0
    for name in names:
        match = LORA_TENSOR.fullmatch(name)
        module = match.group("module") if match else name.rsplit(".", 1)[0]
        key = module.removeprefix(PEFT_PREFIX)
        if match and _is_target(key, targets):
            lora += 1
        elif not any(part in to_save for part in key.split(".")):
            raise InvalidArgument.field(field_of[WEIGHTS], f"{WEIGHTS}: tensor {name!r} belongs to no target "
                                                           f"module of {CONFIG} ({targets!r})", "TENSOR_MISMATCH")
    if lora == 0:
        raise InvalidArgument.field(field_of[WEIGHTS], f"{WEIGHTS}: holds no LoRA tensors for the target modules "
                                                       f"{targets!r}", "TENSOR_MISMATCH")


def _is_target(module: str, targets: str | list[str]) -> bool:
    """peft's rule: a list matches a module whose name is, or ends with '.' + , an entry; a string is a regex."""
    if isinstance(targets, str):
        if targets == "all-linear":
            return True
        try:
            return re.fullmatch(targets, module) is not None
        except re.error:
            return False
    return any(module == t or module.endswith("." + t) for t in targets)


def _ints(values: object) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _load_json(raw: bytes, bad) -> Any:
    """Parse JSON text; deep nesting (RecursionError) and bad UTF-8 are errors of the file, not of the server."""
    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError:
        raise bad("not UTF-8") from None
    except RecursionError:
        raise bad("nested too deep") from None
    except ValueError as error:
        raise bad(str(error)[:200]) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result

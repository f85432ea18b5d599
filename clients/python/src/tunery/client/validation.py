"""Streaming JSONL dataset validator, shared by the dataset service and the offline SDK/CLI.

Python and orjson (no gRPC, protobuf or torch), so both sides produce identical reports. The stdlib
``json`` parse and the field checks below are the reference; orjson only speeds up the plain valid lines
(see ``_quick``).

Feed bytes in chunks of any size; lines may be split across chunks. Only the current line is
buffered, and a line longer than ``Limits.max_line_bytes`` is skipped without being buffered.

    v = Validator(Limits(), format="auto")
    for chunk in chunks:
        new_issues = v.feed(chunk)      # issues found in the lines completed by this chunk
    report = v.finish()                 # adds whole-file issues, statistics, sha256 and size

Rules worth knowing:

* Lines end with ``\\n``; CRLF works because ``\\r`` is JSON whitespace. A final line without a
  newline counts. A UTF-8 byte order mark is ignored at the start of the file (only there).
* Blank (whitespace-only) lines are ignored: they are counted in ``Stats.blank_lines`` but are
  neither examples nor issues. A file with no non-blank line is ``empty_file``.
* The format (chat, prompt_completion, text) is the caller's, or else the one of the first line
  that shows one; a later line of another format is ``mixed_format``.
* Errors make a line an invalid example; warnings do not. Statistics cover valid examples only.
* ``duplicate_example`` compares lines (ignoring surrounding whitespace) by a 64-bit hash of their bytes.
* Issues on whole-file problems (``empty_file``, ``no_valid_examples``) have line 0, offset 0.
* ``max_file_bytes`` and ``max_examples`` (non-blank lines) raise :class:`LimitExceeded`; the
  validator is then unusable and every later call raises the same exception.
"""

from __future__ import annotations

import hashlib
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from itertools import accumulate
from os import PathLike
from typing import Any

import orjson

__all__ = [
    "Code",
    "Format",
    "Issue",
    "LimitExceeded",
    "Limits",
    "Report",
    "SEVERITY",
    "Severity",
    "Stats",
    "Validator",
    "validate_bytes",
    "validate_file",
    "validate_stream",
]


class Format(StrEnum):
    """Dataset formats; one per file."""

    CHAT = "chat"
    PROMPT_COMPLETION = "prompt_completion"
    TEXT = "text"


class Severity(StrEnum):
    """Errors block a dataset version; warnings are stored with it."""

    ERROR = "error"
    WARNING = "warning"


class Code(StrEnum):
    """Stable issue codes (part of the API: never rename one)."""

    INVALID_UTF8 = "invalid_utf8"
    LINE_TOO_LONG = "line_too_long"
    TOO_DEEP = "too_deep"
    INVALID_JSON = "invalid_json"
    WRONG_TYPE = "wrong_type"
    MISSING_FIELD = "missing_field"
    UNKNOWN_ROLE = "unknown_role"
    MISSING_ASSISTANT = "missing_assistant"
    EMPTY_CONTENT = "empty_content"
    INVALID_WEIGHT = "invalid_weight"
    MIXED_FORMAT = "mixed_format"
    EMPTY_FILE = "empty_file"
    NO_VALID_EXAMPLES = "no_valid_examples"
    DUPLICATE_EXAMPLE = "duplicate_example"
    UNKNOWN_KEY = "unknown_key"
    LONG_EXAMPLE = "long_example"
    ZERO_WEIGHT = "zero_weight"


_WARNINGS = {Code.DUPLICATE_EXAMPLE, Code.UNKNOWN_KEY, Code.LONG_EXAMPLE, Code.ZERO_WEIGHT}
SEVERITY: dict[Code, Severity] = {
    c: Severity.WARNING if c in _WARNINGS else Severity.ERROR for c in Code
}


@dataclass(frozen=True)
class Limits:
    """Bounds enforced while streaming. All values must be positive."""

    max_line_bytes: int = 1 << 20  # longer lines (newline excluded) are a line_too_long issue
    max_file_bytes: int = 1 << 30  # exceeding it raises LimitExceeded
    max_examples: int = 1_000_000  # non-blank lines; exceeding it raises LimitExceeded
    max_depth: int = 32  # JSON nesting; deeper lines are a too_deep issue
    max_issues: int = 1_000  # issues kept in the report; all are still counted per code
    long_example_chars: int = 32_768  # examples longer than this get a long_example warning

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if type(value) is not int or value <= 0:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


class LimitExceeded(Exception):
    """The stream went past a hard limit (maps to RESOURCE_EXHAUSTED naming ``limit_name``)."""

    def __init__(self, limit_name: str, limit: int, actual: int, message: str) -> None:
        super().__init__(message)
        self.limit_name = limit_name
        self.limit = limit
        self.actual = actual


@dataclass(frozen=True)
class Issue:
    """One problem. ``line`` is 1-based (0 for whole-file issues), ``offset`` is the byte offset of
    the line start in the stream, ``path`` the JSON path inside the line ("" = the whole line)."""

    code: Code
    severity: Severity
    line: int
    offset: int
    path: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form."""
        return {
            "code": str(self.code),
            "severity": str(self.severity),
            "line": self.line,
            "offset": self.offset,
            "path": self.path,
            "message": self.message,
        }


@dataclass(frozen=True)
class Stats:
    """Statistics over the valid examples (lines without errors)."""

    lines: int = 0  # all lines, blank ones included
    blank_lines: int = 0
    examples: int = 0  # valid examples
    invalid_examples: int = 0  # non-blank lines with at least one error
    duplicates: int = 0  # valid examples identical to an earlier one
    messages_per_role: dict[str, int] = field(default_factory=dict)  # chat only
    turns_min: int = 0  # messages per example; chat only
    turns_max: int = 0
    turns_mean: float = 0.0
    turns_p50: int = 0  # nearest-rank percentiles
    turns_p95: int = 0
    chars_total: int = 0  # example length: characters of all content/prompt/completion/text
    chars_min: int = 0
    chars_max: int = 0
    chars_mean: float = 0.0
    chars_p50: int = 0  # nearest-rank percentiles
    chars_p95: int = 0
    approx_tokens: int = 0  # chars_total / 4, rounded up: a cheap estimate, not a tokenizer count


@dataclass(frozen=True)
class Report:
    """The result of validating one stream. ``ok`` is true when there is no error."""

    format: Format | None  # stated or detected; None if no line showed one
    issues: tuple[Issue, ...]  # the first Limits.max_issues issues, in line order
    issue_counts: dict[str, int]  # every issue per code, including those beyond the cap
    errors: int
    warnings: int
    truncated: bool  # issues were left out because of Limits.max_issues
    stats: Stats
    sha256: str  # hex digest of every byte fed
    size_bytes: int

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable form (used by the CLI's --json)."""
        return {
            "ok": self.ok,
            "format": str(self.format) if self.format else None,
            "issues": [i.to_dict() for i in self.issues],
            "issue_counts": {str(k): v for k, v in self.issue_counts.items()},
            "errors": self.errors,
            "warnings": self.warnings,
            "truncated": self.truncated,
            "stats": asdict(self.stats),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
        }


def _parse_format(value: Format | str | None) -> Format | None:
    if value is None or value == "auto" or value == "":
        return None
    try:
        return Format(value)
    except ValueError:
        choices = ", ".join(f.value for f in Format)
        raise ValueError(f"unknown dataset format {value!r}; use auto, {choices}") from None


_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r"  # JSON whitespace (besides the newline), so a CRLF line parses as is
_ROLES = ("system", "user", "assistant")
_MISSING = object()
_FORMAT_KEYS = {
    Format.CHAT: ("messages",),
    Format.PROMPT_COMPLETION: ("prompt", "completion"),
    Format.TEXT: ("text",),
}
_KNOWN_MESSAGE_KEYS = frozenset(("role", "content", "name", "weight"))
_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}

# Strings are removed before counting brackets; the closing quote is optional so an unterminated
# string consumes the rest of the line (linear time, no retries from every later quote).
_STRING_RE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_DELTA = [0] * 256
for _b in b"[{":
    _BRACKET_DELTA[_b] = 1
for _b in b"]}":
    _BRACKET_DELTA[_b] = -1
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class _ConstantError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _ConstantError(name)


# NaN/Infinity are not JSON; Python's json accepts them unless told otherwise.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _nesting_depth(line: bytes) -> int:
    """Deepest bracket nesting outside strings, without recursion or a per-byte Python loop."""
    if b'"' in line:
        line = _STRING_RE.sub(b"", line)
    brackets = line.translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_BRACKET_DELTA.__getitem__, brackets)), default=0)


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _show(value: Any, limit: int = 60) -> str:
    """Short JSON rendering of a user value for messages (never the whole of a huge one)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(prefix: str, key: str) -> str:
    if key.isidentifier() and len(key) <= 60:
        return f"{prefix}.{key}" if prefix else key
    return f"{prefix}[{_show(key)}]"


def _percentile(sorted_values: array, pct: int) -> int:
    rank = -(-pct * len(sorted_values) // 100)  # ceil, nearest-rank method
    return int(sorted_values[max(rank, 1) - 1])


class Validator:
    """Incremental validator: ``feed`` chunks of bytes, then ``finish`` once for the report."""

    def __init__(self, limits: Limits | None = None, format: Format | str | None = None) -> None:
        """``format``: a :class:`Format` or its value, or None / "auto" to detect it."""
        self.limits = limits or Limits()
        self._stated = _parse_format(format)
        self._format = self._stated
        self._format_line = 0
        self._sha = hashlib.sha256()
        self._size = 0
        self._buf = bytearray()  # the current incomplete line
        self._skipped = -1  # >= 0: bytes of a too-long line being skipped so far
        self._line_no = 0
        self._line_start = 0
        self._failed: LimitExceeded | None = None
        self._report: Report | None = None
        self._issues: list[Issue] = []
        self._counts: dict[str, int] = {}
        self._errors = 0
        self._warnings = 0
        # statistics
        self._blank = 0
        self._nonblank = 0
        self._examples = 0
        self._duplicates = 0
        self._seen = _SeenLines("I" if self.limits.max_file_bytes < 1 << 32 else "Q")
        self._roles: Counter[str] = Counter()
        self._turns_min = self._turns_max = self._turns_total = 0
        self._turns = array("I")
        self._chars = array("Q")

    @property
    def size_bytes(self) -> int:
        """Bytes fed so far."""
        return self._size

    def feed(self, chunk: bytes | bytearray | memoryview) -> tuple[Issue, ...]:
        """Consume the next bytes; return the issues (within the cap) of lines they completed.

        Raises :class:`LimitExceeded` for ``max_file_bytes`` or ``max_examples``.
        """
        self._check_open()
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        size = self._size + len(chunk)
        if size > self.limits.max_file_bytes:
            self._fail(LimitExceeded(
                "max_file_bytes", self.limits.max_file_bytes, size,
                f"dataset is larger than max_file_bytes={self.limits.max_file_bytes} bytes; "
                "split it into smaller files or raise the limit",
            ))
        self._sha.update(chunk)
        self._size = size
        before = len(self._issues)
        try:
            self._consume(chunk)
        except LimitExceeded as exc:
            self._fail(exc)
        return tuple(self._issues[before:])

    def finish(self) -> Report:
        """Validate the last line (if it has no newline), add whole-file issues, build the report."""
        if self._report is not None:
            return self._report
        self._check_open()
        try:
            if self._skipped >= 0:
                self._end_long_line()
            elif self._buf:
                line = bytes(self._buf)
                self._buf = bytearray()
                self._line(line)
        except LimitExceeded as exc:
            self._fail(exc)
        if self._nonblank == 0:
            what = "is empty" if self._size == 0 else "contains only blank lines"
            self._add(Code.EMPTY_FILE, 0, 0, "",
                      f"the file {what}; add one JSON example per line")
        elif self._examples == 0:
            self._add(Code.NO_VALID_EXAMPLES, 0, 0, "",
                      f"none of the {self._nonblank} examples is valid; fix the errors reported "
                      "for each line")
        self._report = Report(
            format=self._format,
            issues=tuple(self._issues),
            issue_counts={str(code): n for code, n in sorted(self._counts.items())},
            errors=self._errors,
            warnings=self._warnings,
            truncated=len(self._issues) < self._errors + self._warnings,
            stats=self._stats(),
            sha256=self._sha.hexdigest(),
            size_bytes=self._size,
        )
        return self._report

    # -- streaming -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._report is not None:
            raise ValueError("the validator is finished; create a new one for another stream")

    def _fail(self, exc: LimitExceeded) -> None:
        self._failed = exc
        self._buf = bytearray()
        raise exc

    def _consume(self, chunk: bytes) -> None:
        max_line = self.limits.max_line_bytes
        pos, end = 0, len(chunk)
        while pos < end:
            nl = chunk.find(b"\n", pos)
            if self._skipped >= 0:  # inside a too-long line: drop bytes up to its newline
                if nl < 0:
                    self._skipped += end - pos
                    return
                self._skipped += nl - pos
                self._end_long_line()
                pos = nl + 1
                continue
            if nl < 0:
                if len(self._buf) + end - pos > max_line:
                    self._skipped = len(self._buf) + end - pos
                    self._buf = bytearray()
                else:
                    self._buf += memoryview(chunk)[pos:]
                return
            length = len(self._buf) + nl - pos
            if length > max_line:
                self._skipped = length
                self._buf = bytearray()
                self._end_long_line()
            elif self._buf:
                self._buf += memoryview(chunk)[pos:nl]
                line = bytes(self._buf)
                self._buf = bytearray()
                self._line(line)
            else:
                self._line(chunk[pos:nl])
            pos = nl + 1

    def _end_long_line(self) -> None:
        length, self._skipped = self._skipped, -1
        line_no, offset = self._start_line(length)
        self._count_example(line_no)
        self._add(Code.LINE_TOO_LONG, line_no, offset, "",
                  f"line is {length} bytes, over max_line_bytes={self.limits.max_line_bytes}; "
                  "shorten or split the example, or raise the limit")

    def _start_line(self, length: int) -> tuple[int, int]:
        self._line_no += 1
        offset = self._line_start
        self._line_start += length + 1
        return self._line_no, offset

    def _count_example(self, line_no: int) -> None:
        self._nonblank += 1
        if self._nonblank > self.limits.max_examples:
            raise LimitExceeded(
                "max_examples", self.limits.max_examples, self._nonblank,
                f"dataset has more than max_examples={self.limits.max_examples} examples "
                f"(line {line_no}); split it or raise the limit",
            )

    def _add(self, code: Code, line: int, offset: int, path: str, message: str) -> None:
        severity = SEVERITY[code]
        if severity is Severity.ERROR:
            self._errors += 1
        else:
            self._warnings += 1
        self._counts[code] = self._counts.get(code, 0) + 1
        if len(self._issues) < self.limits.max_issues:
            self._issues.append(Issue(code, severity, line, offset, path, message))

    # -- one line --------------------------------------------------------------------------

    def _line(self, raw: bytes) -> None:
        line_no, offset = self._start_line(len(raw))
        lead = 0
        if line_no == 1 and raw.startswith(_BOM):
            raw, lead = raw[3:], 3
        stripped = raw.strip(_WS)
        if not stripped:
            self._blank += 1
            return
        self._count_example(line_no)
        size = self._quick(stripped)
        if size is None:
            errors = self._errors
            obj = self._parse(raw, stripped, lead, line_no, offset)
            if obj is None:
                return
            size = self._check_example(obj, raw, line_no, offset)
            if self._errors != errors or size is None:
                return
        chars, turns, roles = size
        self._examples += 1
        self._chars.append(chars)
        if turns:
            self._turns_total += turns
            self._turns_min = min(self._turns_min, turns) if self._turns_min else turns
            self._turns_max = max(self._turns_max, turns)
            self._turns.append(turns)
            self._roles.update(roles)
        if chars > self.limits.long_example_chars:
            self._add(Code.LONG_EXAMPLE, line_no, offset, "",
                      f"example has {chars} characters, over long_example_chars="
                      f"{self.limits.long_example_chars}; it may not fit the model's context and "
                      "be truncated in training; shorten or split it if that matters")
        first = self._seen.first(hash(stripped), line_no)
        if first != line_no:
            self._duplicates += 1
            self._add(Code.DUPLICATE_EXAMPLE, line_no, offset, "",
                      f"example is identical to line {first}; a duplicate weighs that example "
                      "twice in training, so remove it unless that is intended")

    def _quick(self, stripped: bytes) -> tuple[int, int, list[str] | tuple[()]] | None:
        """(chars, turns, roles) of a line that is a plain valid example of the file's format, or None for
        anything else, which the reference path then checks and reports.

        A plain example holds only strings where the format wants them (and 0/1 weights), which orjson and
        json parse alike: orjson rejects the lone surrogates json accepts, and it turns integers beyond 64
        bits into floats, but neither can be part of a plain example, and orjson rejects nothing valid
        here that json accepts."""
        fmt = self._format
        if fmt is None or stripped.count(b"[") + stripped.count(b"{") > self.limits.max_depth:
            return None
        try:
            obj = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict:
            return None
        if fmt is Format.CHAT:
            return _quick_chat(obj)
        if fmt is Format.PROMPT_COMPLETION:
            prompt, completion = obj.get("prompt"), obj.get("completion")
            if (len(obj) != 2 or type(prompt) is not str or type(completion) is not str or not completion
                    or completion.isspace()):
                return None
            return len(prompt) + len(completion), 0, ()
        text = obj.get("text")
        if len(obj) != 1 or type(text) is not str or not text or text.isspace():
            return None
        return len(text), 0, ()

    def _parse(self, raw: bytes, stripped: bytes, lead: int, line_no: int,
               offset: int) -> dict | None:
        """Decode and parse one non-blank line; report and return None when that fails."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            col = exc.start + lead
            self._add(Code.INVALID_UTF8, line_no, offset, "",
                      f"invalid UTF-8 byte 0x{raw[exc.start]:02x} at byte {col} of the line "
                      f"(file offset {offset + col}); save the file as UTF-8")
            return None
        limit = self.limits.max_depth
        # Count first (two C scans): most lines have far fewer brackets than the limit.
        if stripped.count(b"[") + stripped.count(b"{") > limit:
            depth = _nesting_depth(stripped)
            if depth > limit:
                self._add(Code.TOO_DEEP, line_no, offset, "",
                          f"JSON nesting depth {depth} is over max_depth={limit}; examples need "
                          "only a few levels, so flatten the data")
                return None
        try:
            obj = _DECODER.decode(text)
        except _ConstantError as exc:
            self._add(Code.INVALID_JSON, line_no, offset, "",
                      f"invalid JSON: {exc} is not a JSON value; use a number, a string or null")
            return None
        except json.JSONDecodeError as exc:
            self._add(Code.INVALID_JSON, line_no, offset, "",
                      f"invalid JSON: {exc.msg} at character {exc.colno}; each line must hold "
                      "exactly one complete JSON object")
            return None
        except ValueError as exc:  # e.g. an integer with too many digits
            self._add(Code.INVALID_JSON, line_no, offset, "", f"invalid JSON: {exc}")
            return None
        except RecursionError:  # not expected after the depth check; never crash on input
            self._add(Code.TOO_DEEP, line_no, offset, "",
                      f"JSON nesting is too deep (max_depth={limit}); flatten the data")
            return None
        if type(obj) is not dict:
            self._add(Code.WRONG_TYPE, line_no, offset, "",
                      f"each line must be a JSON object such as {{\"messages\": [...]}}, "
                      f"found {_type_name(obj)}")
            return None
        return obj

    def _check_example(self, obj: dict, raw: bytes, line_no: int,
                       offset: int) -> tuple[int, int, dict[str, int]] | None:
        """Check the example against the file's format; return (chars, turns, roles) or None."""
        fmt = self._format
        kind = (Format.CHAT if "messages" in obj
                else Format.PROMPT_COMPLETION if "prompt" in obj or "completion" in obj
                else Format.TEXT if "text" in obj else None)
        if fmt is None:
            if kind is None:
                self._add(Code.MISSING_FIELD, line_no, offset, "",
                          "line has none of the keys \"messages\" (chat), \"prompt\"/\"completion\" "
                          "or \"text\"; add the one for your format")
                return None
            fmt = self._format = kind
            self._format_line = line_no
        elif not any(k in obj for k in _FORMAT_KEYS[fmt]):
            if kind is not None:
                origin = (f"detected from line {self._format_line}" if self._stated is None
                          else "as requested")
                self._add(Code.MIXED_FORMAT, line_no, offset, "",
                          f"line is in {kind} format but the file is {fmt} ({origin}); use one "
                          "format per file: convert this line or move it to another file")
            else:
                keys = " and ".join(f'"{k}"' for k in _FORMAT_KEYS[fmt])
                self._add(Code.MISSING_FIELD, line_no, offset, _FORMAT_KEYS[fmt][0],
                          f"missing {keys}, required in {fmt} format")
            return None
        # Lone surrogates (from "\\udXXX" escapes) cannot be encoded as UTF-8 for tokenizing.
        check = _ExampleCheck(self, line_no, offset, b"\\ud" in raw or b"\\uD" in raw)
        if fmt is Format.CHAT:
            return check.chat(obj)
        if fmt is Format.PROMPT_COMPLETION:
            return check.prompt_completion(obj)
        return check.text(obj)

    def _stats(self) -> Stats:
        n = self._examples
        chars = array("Q", sorted(self._chars))
        turns = array("I", sorted(self._turns))
        total = sum(chars)
        return Stats(
            lines=self._line_no,
            blank_lines=self._blank,
            examples=n,
            invalid_examples=self._nonblank - n,
            duplicates=self._duplicates,
            messages_per_role=dict(sorted(self._roles.items())),
            turns_min=self._turns_min,
            turns_max=self._turns_max,
            turns_mean=self._turns_total / n if n and self._turns_total else 0.0,
            turns_p50=_percentile(turns, 50) if turns else 0,
            turns_p95=_percentile(turns, 95) if turns else 0,
            chars_total=total,
            chars_min=chars[0] if n else 0,
            chars_max=chars[-1] if n else 0,
            chars_mean=total / n if n else 0.0,
            chars_p50=_percentile(chars, 50) if n else 0,
            chars_p95=_percentile(chars, 95) if n else 0,
            approx_tokens=-(-total // 4),
        )


def _quick_chat(obj: dict) -> tuple[int, int, list[str]] | None:
    """``Validator._quick`` for chat: messages of only a role and a non-blank content, assistant ones
    optionally with a weight of 0 or 1, at least one assistant message trained on."""
    messages = obj.get("messages")
    if len(obj) != 1 or type(messages) is not list:
        return None
    chars, roles, trained = 0, [], False
    for message in messages:
        if type(message) is not dict:
            return None
        role, content = message.get("role"), message.get("content")
        if role not in _ROLES or type(content) is not str or not content or content.isspace():
            return None
        if len(message) != 2:
            weight = message.get("weight")
            if len(message) != 3 or role != "assistant" or type(weight) is not int or weight not in (0, 1):
                return None
            trained = trained or weight == 1
        elif role == "assistant":
            trained = True
        chars += len(content)
        roles.append(role)
    return (chars, len(messages), roles) if trained else None


class _SeenLines:
    """The first line of each 64-bit line hash, in an open-addressing table of two arrays that grows at
    half full: at most ~32 bytes a line, where a dict of digest bytes to ints takes ~144. Python's hash()
    of bytes is keyed per process, so lines cannot be made to collide on purpose."""

    def __init__(self, line_type: str) -> None:
        self._line_type = line_type  # "I" while line numbers fit 32 bits
        self._keys = array("q", [0]) * 1024  # 0 marks a free slot
        self._lines = array(line_type, [0]) * 1024
        self._used = 0

    def first(self, key: int, line: int) -> int:
        """The line that first had ``key``; ``line`` itself (now recorded) when the key is new."""
        key = key or 1
        keys, mask = self._keys, len(self._keys) - 1
        slot = key & mask
        while (found := keys[slot]) != key:
            if not found:
                keys[slot] = key
                self._lines[slot] = line
                self._used += 1
                if 2 * self._used > len(keys):
                    self._grow()
                return line
            slot = (slot + 1) & mask
        return self._lines[slot]

    def _grow(self) -> None:
        entries = zip(self._keys, self._lines)
        size = 2 * len(self._keys)
        self._keys = array("q", [0]) * size
        self._lines = array(self._line_type, [0]) * size
        self._used = 0
        for key, line in entries:
            if key:
                self.first(key, line)


class _ExampleCheck:
    """Field checks for one parsed example; reports through the validator."""

    def __init__(self, validator: Validator, line: int, offset: int, surrogates: bool) -> None:
        self._v = validator
        self._line = line
        self._offset = offset
        self._surrogates = surrogates

    def _add(self, code: Code, path: str, message: str) -> None:
        self._v._add(code, self._line, self._offset, path, message)

    def _string(self, obj: dict, key: str, path: str, what: str) -> str | None:
        """The string at ``obj[key]``, or None after reporting it missing or mistyped."""
        value = obj.get(key, _MISSING)
        if value is _MISSING:
            self._add(Code.MISSING_FIELD, path, f"missing {path}; add {what}")
            return None
        if type(value) is not str:
            self._add(Code.WRONG_TYPE, path,
                      f"{path} must be a string, found {_type_name(value)}; give {what} as text")
            return None
        if self._surrogates and _LONE_SURROGATE_RE.search(value):
            self._add(Code.INVALID_UTF8, path,
                      f"{path} contains an unpaired surrogate escape (\\ud800-\\udfff), which is "
                      "not valid Unicode text; remove it or escape a full surrogate pair")
            return None
        return value

    def _unknown_keys(self, obj: dict, known: Iterable[str], prefix: str) -> None:
        for key in obj:
            if key not in known:
                path = _key_path(prefix, key)
                self._add(Code.UNKNOWN_KEY, path,
                          f"unknown key {path} is ignored in training; remove it if it is a typo")

    def _non_empty(self, value: str | None, path: str, what: str) -> int | None:
        if value is None:
            return None
        if not value.strip():
            self._add(Code.EMPTY_CONTENT, path, f"{path} is empty; write {what}")
            return None
        return len(value)

    def chat(self, obj: dict) -> tuple[int, int, dict[str, int]] | None:
        messages = obj["messages"]
        self._unknown_keys(obj, ("messages",), "")
        if type(messages) is not list:
            self._add(Code.WRONG_TYPE, "messages",
                      f"messages must be an array of {{\"role\", \"content\"}} objects, "
                      f"found {_type_name(messages)}")
            return None
        if not messages:
            self._add(Code.EMPTY_CONTENT, "messages",
                      "messages is empty; add at least a user and an assistant message")
            return None
        chars = 0
        roles: dict[str, int] = {}
        assistant = trained = False
        for i, message in enumerate(messages):
            path = f"messages[{i}]"
            if type(message) is not dict:
                self._add(Code.WRONG_TYPE, path,
                          f"{path} must be an object like {{\"role\": \"user\", \"content\": "
                          f"\"...\"}}, found {_type_name(message)}")
                continue
            role = self._string(message, "role", f"{path}.role",
                                "a role: system, user or assistant")
            if role is not None and role not in _ROLES:
                self._add(Code.UNKNOWN_ROLE, f"{path}.role",
                          f"{path}.role is {_show(role)}; use system, user or assistant")
                role = None
            content = self._string(message, "content", f"{path}.content", "the message text")
            length = self._non_empty(content, f"{path}.content", "the message text or remove "
                                     "the message")
            chars += length or 0
            if "name" in message:
                self._string(message, "name", f"{path}.name", "the participant's name")
            weight = message.get("weight", _MISSING)
            if weight is not _MISSING:
                if role is not None and role != "assistant":
                    self._add(Code.INVALID_WEIGHT, f"{path}.weight",
                              f"{path}.weight is only allowed on assistant messages; remove it")
                elif type(weight) is not int or weight not in (0, 1):
                    self._add(Code.INVALID_WEIGHT, f"{path}.weight",
                              f"{path}.weight must be 0 (do not train on this message) or 1 "
                              f"(train on it), found {_show(weight)}")
            if role is not None:
                roles[role] = roles.get(role, 0) + 1
            if role == "assistant":
                assistant = True
                trained = trained or weight is _MISSING or weight == 1
            self._unknown_keys(message, _KNOWN_MESSAGE_KEYS, path)
        if not assistant:
            self._add(Code.MISSING_ASSISTANT, "messages",
                      "messages has no assistant message; add the reply the model should learn")
            return None
        if not trained:
            self._add(Code.ZERO_WEIGHT, "messages",
                      "every assistant message has weight 0, so this example teaches nothing; "
                      "set weight 1 on at least one or remove the example")
        return chars, len(messages), roles

    def prompt_completion(self, obj: dict) -> tuple[int, int, dict[str, int]] | None:
        self._unknown_keys(obj, ("prompt", "completion"), "")
        # An empty prompt is allowed (unconditional completion); an empty completion is not.
        prompt = self._string(obj, "prompt", "prompt", "the input text")
        completion = self._string(obj, "completion", "completion", "the expected output text")
        length = self._non_empty(completion, "completion", "the expected output text")
        if prompt is None or length is None:
            return None
        return len(prompt) + length, 0, {}

    def text(self, obj: dict) -> tuple[int, int, dict[str, int]] | None:
        self._unknown_keys(obj, ("text",), "")
        length = self._non_empty(self._string(obj, "text", "text", "the training text"),
                                 "text", "the training text")
        return None if length is None else (length, 0, {})


def validate_stream(chunks: Iterable[bytes], limits: Limits | None = None,
                    format: Format | str | None = None) -> Report:
    """Validate an iterable of byte chunks (any boundaries)."""
    validator = Validator(limits, format)
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()


def validate_bytes(data: bytes, limits: Limits | None = None,
                   format: Format | str | None = None) -> Report:
    """Validate an in-memory JSONL document."""
    return validate_stream((data,), limits, format)


def validate_file(path: str | PathLike[str], limits: Limits | None = None,
                  format: Format | str | None = None, chunk_size: int = 1 << 20) -> Report:
    """Validate a JSONL file, reading it in ``chunk_size`` pieces."""
    with open(path, "rb") as f:
        return validate_stream(iter(lambda: f.read(chunk_size), b""), limits, format)

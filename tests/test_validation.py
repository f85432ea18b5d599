"""Tests for the streaming JSONL validator (tunery.client.validation)."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunery.client.validation import (
    SEVERITY,
    Code,
    Format,
    Issue,
    LimitExceeded,
    Limits,
    Report,
    Severity,
    Validator,
    validate_bytes,
    validate_file,
    validate_stream,
)


def chat(*pairs: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


def line(obj) -> bytes:
    return json.dumps(obj).encode()


def jsonl(*lines: bytes | dict) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else line(ln)) + b"\n" for ln in lines)


GOOD = chat(("user", "What is 2+2?"), ("assistant", "4"))
GOOD2 = chat(("system", "Be terse."), ("user", "Capital of France?"), ("assistant", "Paris"))


def only(report: Report, code: Code) -> Issue:
    """The single issue of ``code`` in the report (and assert there is exactly one)."""
    found = [i for i in report.issues if i.code == code]
    assert len(found) == 1, report.issues
    return found[0]


def where(issue: Issue) -> tuple[int, int, str]:
    return issue.line, issue.offset, issue.path


# -- valid data and statistics ---------------------------------------------------------------


def test_openai_documentation_examples_are_accepted():
    # From OpenAI's fine-tuning guide (chat format, including per-message weight).
    data = (
        b'{"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also '
        b'sarcastic."}, {"role": "user", "content": "What\'s the capital of France?"}, '
        b'{"role": "assistant", "content": "Paris, as if everyone doesn\'t know that already."}]}\n'
        b'{"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also '
        b'sarcastic."}, {"role": "user", "content": "What\'s the capital of France?"}, '
        b'{"role": "assistant", "content": "Paris", "weight": 0}, {"role": "user", "content": '
        b'"Can you be more sarcastic?"}, {"role": "assistant", "content": "Paris, as if everyone '
        b'doesn\'t know that already.", "weight": 1}]}\n'
    )
    report = validate_bytes(data)
    assert report.ok and report.issues == ()
    assert report.format is Format.CHAT
    assert report.stats.examples == 2
    assert report.stats.messages_per_role == {"assistant": 3, "system": 2, "user": 3}
    assert (report.stats.turns_min, report.stats.turns_max, report.stats.turns_mean) == (3, 5, 4.0)
    assert (report.stats.turns_p50, report.stats.turns_p95) == (3, 5)


def test_chat_statistics_are_exact():
    data = jsonl(GOOD, GOOD2, chat(("user", "x" * 10), ("assistant", "y" * 30)))
    report = validate_bytes(data)
    s = report.stats
    lengths = sorted([len("What is 2+2?") + 1, len("Be terse.Capital of France?Paris"), 40])
    assert (s.lines, s.blank_lines, s.examples, s.invalid_examples, s.duplicates) == (3, 0, 3, 0, 0)
    assert s.chars_total == sum(lengths)
    assert (s.chars_min, s.chars_p50, s.chars_p95, s.chars_max) == (lengths[0], lengths[1],
                                                                    lengths[2], lengths[2])
    assert s.chars_mean == pytest.approx(sum(lengths) / 3)
    assert s.approx_tokens == -(-sum(lengths) // 4)
    assert report.sha256 == hashlib.sha256(data).hexdigest()
    assert report.size_bytes == len(data)


def test_prompt_completion_and_text_formats():
    pc = validate_bytes(jsonl({"prompt": "", "completion": "abc"}, {"prompt": "ab", "completion": "c"}))
    assert pc.ok and pc.format is Format.PROMPT_COMPLETION
    assert (pc.stats.examples, pc.stats.chars_total, pc.stats.turns_max) == (2, 6, 0)
    assert pc.stats.messages_per_role == {}
    text = validate_bytes(jsonl({"text": "hello"}, {"text": "hi"}), format="text")
    assert text.ok and text.format is Format.TEXT
    assert (text.stats.chars_min, text.stats.chars_max) == (2, 5)


def test_crlf_bom_blank_lines_and_missing_final_newline():
    data = b"\xef\xbb\xbf" + line(GOOD) + b"\r\n\r\n   \n" + line(GOOD2)
    report = validate_bytes(data)
    assert report.ok and report.issues == ()
    assert (report.stats.lines, report.stats.blank_lines, report.stats.examples) == (4, 2, 2)
    later_bom = validate_bytes(line(GOOD) + b"\n\xef\xbb\xbf" + line(GOOD2))
    assert where(only(later_bom, Code.INVALID_JSON)) == (2, len(line(GOOD)) + 1, "")


def test_validate_file_and_stream_match_bytes(tmp_path):
    data = jsonl(GOOD, b"{bad", GOOD2, GOOD)
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    expected = validate_bytes(data)
    assert validate_file(path, chunk_size=7) == expected
    assert validate_stream(iter([data[:5], b"", data[5:]])) == expected
    json.dumps(expected.to_dict())  # serialisable for the CLI
    assert expected.to_dict()["issue_counts"] == {"duplicate_example": 1, "invalid_json": 1}


# -- every code, with exact line, offset and path ------------------------------------------


def test_invalid_json_nan_and_huge_integers():
    lines = [line(GOOD), b'{"messages": [', b'{"text": NaN}', b'{"text": "a"} x',
             b'{"n": ' + b"9" * 5000 + b"}"]
    report = validate_bytes(b"\n".join(lines))
    issues = [i for i in report.issues if i.code == Code.INVALID_JSON]
    offsets = [sum(len(ln) + 1 for ln in lines[:k]) for k in range(1, 5)]
    assert [where(i) for i in issues] == [(k + 2, offsets[k], "") for k in range(4)]
    assert "NaN" in issues[1].message
    assert all(i.severity is Severity.ERROR for i in issues)


def test_wrong_type_and_missing_field_paths():
    data = jsonl(
        GOOD,
        [1, 2],  # line 2: not an object
        {"messages": "hi"},  # 3
        {"messages": [{"role": "user"}, "x", {"content": "a", "role": 5},
                      {"role": "assistant", "content": None, "name": 3}]},  # 4
        {"other": 1},  # 5: no format key
    )
    r = validate_bytes(data)
    got = [(i.code, i.line, i.path) for i in r.issues]
    assert got == [
        (Code.WRONG_TYPE, 2, ""),
        (Code.WRONG_TYPE, 3, "messages"),
        (Code.MISSING_FIELD, 4, "messages[0].content"),
        (Code.WRONG_TYPE, 4, "messages[1]"),
        (Code.WRONG_TYPE, 4, "messages[2].role"),
        (Code.WRONG_TYPE, 4, "messages[3].content"),
        (Code.WRONG_TYPE, 4, "messages[3].name"),
        (Code.MISSING_FIELD, 5, "messages"),
    ]
    assert r.issues[0].offset == len(line(GOOD)) + 1
    assert "found null" in r.issues[5].message


def test_missing_field_before_format_is_known():
    r = validate_bytes(jsonl({"foo": 1}, {"text": "ok"}))
    assert where(only(r, Code.MISSING_FIELD)) == (1, 0, "")
    assert r.format is Format.TEXT and r.stats.examples == 1


def test_unknown_role_missing_assistant_empty_content():
    first = line(GOOD)
    data = jsonl(GOOD, chat(("user", "hi"), ("bot", "yo")), chat(("user", "  "), ("assistant", "a")),
                 {"messages": []}, {"prompt": "p", "completion": ""}, )
    r = validate_bytes(data[: data.index(b'{"prompt"')])
    offset2 = len(first) + 1
    assert where(only(r, Code.UNKNOWN_ROLE)) == (2, offset2, "messages[1].role")
    assert "bot" in only(r, Code.UNKNOWN_ROLE).message
    assert where(only(r, Code.MISSING_ASSISTANT)) == (2, offset2, "messages")
    empty = [where(i) for i in r.issues if i.code == Code.EMPTY_CONTENT]
    assert [(ln, path) for ln, _, path in empty] == [(3, "messages[0].content"), (4, "messages")]
    pc = validate_bytes(jsonl({"prompt": "p", "completion": " "}))
    assert where(only(pc, Code.EMPTY_CONTENT)) == (1, 0, "completion")
    assert where(only(validate_bytes(b'{"text": ""}'), Code.EMPTY_CONTENT)) == (1, 0, "text")


def test_invalid_weight_and_zero_weight():
    msgs = [{"role": "user", "content": "q", "weight": 1},
            {"role": "assistant", "content": "a", "weight": 2},
            {"role": "assistant", "content": "b", "weight": True}]
    r = validate_bytes(jsonl(GOOD, {"messages": msgs}))
    paths = [i.path for i in r.issues if i.code == Code.INVALID_WEIGHT]
    assert paths == ["messages[0].weight", "messages[1].weight", "messages[2].weight"]
    assert "only allowed on assistant" in r.issues[0].message
    zero = chat(("user", "q"))
    zero["messages"].append({"role": "assistant", "content": "a", "weight": 0})
    z = validate_bytes(jsonl(zero))
    assert where(only(z, Code.ZERO_WEIGHT)) == (1, 0, "messages")
    assert z.ok and SEVERITY[Code.ZERO_WEIGHT] is Severity.WARNING


def test_unknown_keys_are_warnings_with_paths():
    obj = chat(("user", "q"), ("assistant", "a"), extra=1)
    obj["messages"][0]["tool_calls"] = []
    obj["messages"][1]["a b"] = 1
    r = validate_bytes(jsonl(obj))
    assert r.ok
    assert [i.path for i in r.issues] == ["extra", "messages[0].tool_calls", 'messages[1]["a b"]']
    assert all(i.code == Code.UNKNOWN_KEY and i.severity is Severity.WARNING for i in r.issues)


def test_mixed_format_auto_and_stated():
    data = jsonl({"text": "a"}, GOOD, {"prompt": "p", "completion": "c"})
    r = validate_bytes(data)
    mixed = [where(i) for i in r.issues if i.code == Code.MIXED_FORMAT]
    first = len(line({"text": "a"})) + 1
    assert mixed == [(2, first, ""), (3, first + len(line(GOOD)) + 1, "")]
    assert "detected from line 1" in r.issues[0].message
    stated = validate_bytes(data, format="prompt_completion")
    assert [i.line for i in stated.issues] == [1, 2]
    assert {i.code for i in stated.issues} == {Code.MIXED_FORMAT}
    assert stated.format is Format.PROMPT_COMPLETION and stated.stats.examples == 1


def test_duplicates_and_long_examples():
    long_ex = chat(("user", "q"), ("assistant", "x" * 50))
    data = jsonl(GOOD, long_ex, b"  " + line(GOOD) + b"\t", GOOD2)
    r = validate_bytes(data, Limits(long_example_chars=40))
    dup = only(r, Code.DUPLICATE_EXAMPLE)
    assert where(dup) == (3, len(line(GOOD)) + len(line(long_ex)) + 2, "")
    assert "line 1" in dup.message
    assert where(only(r, Code.LONG_EXAMPLE))[:2] == (2, len(line(GOOD)) + 1)
    assert r.ok and r.stats.duplicates == 1 and r.stats.examples == 4


def test_invalid_utf8_and_lone_surrogate():
    bad = b'{"text": "caf\xc3"}'
    first = line({"text": "ok"})
    r = validate_bytes(jsonl(first, bad, b'{"text": "a\\ud800b"}', b'{"text": "\\ud83d\\ude00"}'))
    issues = [i for i in r.issues if i.code == Code.INVALID_UTF8]
    assert [where(i) for i in issues] == [(2, len(first) + 1, ""),
                                          (3, len(first) + len(bad) + 2, "text")]
    assert "byte 13 of the line" in issues[0].message
    assert r.stats.examples == 2  # the escaped surrogate pair is a valid emoji


def test_too_deep_without_recursion_error():
    deep = b"[" * 10_000 + b"]" * 10_000
    deep_obj = b'{"text": "a", "x": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001
    in_string = line({"text": "[" * 5000})
    r = validate_bytes(jsonl(deep, deep_obj, in_string, b"[" * 10_000))
    too_deep = [where(i) for i in r.issues if i.code == Code.TOO_DEEP]
    assert too_deep == [(1, 0, ""), (2, len(deep) + 1, ""), (4, len(deep) + len(deep_obj)
                                                               + len(in_string) + 3, "")]
    assert "10000" in r.issues[0].message
    assert r.stats.examples == 1  # brackets inside strings are not nesting
    at_limit = b"[" * 31 + b'{"text": "a"}' + b"]" * 31  # depth 32 == max_depth: parsed
    assert only(validate_bytes(at_limit, format="text"), Code.WRONG_TYPE).line == 1
    over = b"[" + at_limit + b"]"
    assert "depth 33" in only(validate_bytes(over, format="text"), Code.TOO_DEEP).message


def test_line_too_long_is_skipped_across_chunks():
    long_line = b'{"text": "' + b"a" * 100 + b'"}'
    data = jsonl(GOOD, long_line, {"text": "b"})
    limits = Limits(max_line_bytes=len(line(GOOD)))
    for chunk in (1, 5, len(data)):
        r = validate_stream((data[k:k + chunk] for k in range(0, len(data), chunk)), limits)
        issue = only(r, Code.LINE_TOO_LONG)
        assert where(issue) == (2, len(line(GOOD)) + 1, "")
        assert f"line is {len(long_line)} bytes" in issue.message
        assert only(r, Code.MIXED_FORMAT).line == 3  # lines after the long one still count
    assert only(validate_bytes(line(GOOD) + b"\n" + long_line, limits), Code.LINE_TOO_LONG).line == 2


def test_fifty_megabyte_line_is_never_buffered():
    chunk = b"x" * (1 << 20)
    v = Validator(Limits(max_line_bytes=1 << 20))
    tracemalloc.start()
    try:
        v.feed(line(GOOD) + b"\n[")
        for _ in range(50):
            v.feed(chunk)
        v.feed(b"\n" + line(GOOD2) + b"\n")
        report = v.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak
    assert [(i.code, i.line) for i in report.issues] == [(Code.LINE_TOO_LONG, 2)]
    assert report.stats.examples == 2 and report.size_bytes == 50 * (1 << 20) + len(
        line(GOOD)) + len(line(GOOD2)) + 4


def test_empty_file_and_no_valid_examples():
    for data in (b"", b"\n \r\n\t\n"):
        r = validate_bytes(data)
        assert [where(i) for i in r.issues] == [(0, 0, "")]
        assert r.issues[0].code == Code.EMPTY_FILE and not r.ok
    r = validate_bytes(jsonl(b"nope", {"text": ""}))
    assert r.issues[-1].code == Code.NO_VALID_EXAMPLES and where(r.issues[-1]) == (0, 0, "")
    assert r.stats.invalid_examples == 2 and r.format is Format.TEXT


def test_issue_cap_keeps_counts_for_all():
    data = jsonl(GOOD, *([b"{"] * 30), *([GOOD] * 5))
    r = validate_bytes(data, Limits(max_issues=10))
    assert len(r.issues) == 10 and r.truncated
    assert r.issue_counts == {"duplicate_example": 5, "invalid_json": 30}
    assert (r.errors, r.warnings) == (30, 5)
    assert not validate_bytes(data).truncated


# -- hard limits ---------------------------------------------------------------------------


def test_file_bytes_limit_raises_and_stays_failed():
    v = Validator(Limits(max_file_bytes=100))
    v.feed(b"x" * 60)
    with pytest.raises(LimitExceeded) as exc:
        v.feed(b"y" * 41)
    assert (exc.value.limit_name, exc.value.limit, exc.value.actual) == ("max_file_bytes", 100, 101)
    assert "max_file_bytes" in str(exc.value)
    with pytest.raises(LimitExceeded):
        v.finish()


def test_examples_limit_counts_non_blank_lines():
    limits = Limits(max_examples=2)
    assert validate_bytes(jsonl(GOOD, b"", GOOD2), limits).ok
    with pytest.raises(LimitExceeded) as exc:
        validate_bytes(jsonl(GOOD, GOOD2, b"{"), limits)
    assert (exc.value.limit_name, exc.value.limit, exc.value.actual) == ("max_examples", 2, 3)
    with pytest.raises(LimitExceeded):  # the last line has no newline: raised by finish
        validate_bytes(jsonl(GOOD, GOOD2) + b"{", limits)


def test_feed_returns_the_issues_of_completed_lines():
    v = Validator()
    assert v.feed(line(GOOD) + b"\n{") == ()
    new = v.feed(b"\n")
    assert [(i.code, i.line) for i in new] == [(Code.INVALID_JSON, 2)]
    assert v.size_bytes == len(line(GOOD)) + 3
    report = v.finish()
    assert v.finish() is report
    with pytest.raises(ValueError):
        v.feed(b"x")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown dataset format"):
        Validator(format="csv")
    with pytest.raises(ValueError, match="max_depth"):
        Limits(max_depth=0)
    assert Validator(format="auto").finish().format is None


# -- properties ----------------------------------------------------------------------------

FRAGMENTS = [
    line(GOOD), line(GOOD2), line({"text": "t"}), line({"prompt": "p", "completion": "c"}),
    b"", b"  ", b"{", b"[" * 40, b"\xff\xfe", b'{"messages": [{"role": "bot"}]}',
    line(chat(("user", "q"), ("assistant", "a" * 30), extra=[1])), b'"\\ud800"',
    b'{"text": "' + b"z" * 70 + b'"}', b"\xef\xbb\xbf" + line(GOOD),
]
documents = st.lists(
    st.tuples(st.sampled_from(FRAGMENTS), st.sampled_from([b"\n", b"\r\n"])), max_size=25,
).map(lambda parts: b"".join(a + b for a, b in parts)).flatmap(
    lambda doc: st.tuples(st.just(doc), st.booleans()).map(lambda t: t[0] if t[1] else t[0][:-1]))
SMALL = Limits(max_line_bytes=64, max_issues=7, long_example_chars=20)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_chunking_does_not_change_the_report(data, cuts):
    expected = validate_bytes(data, SMALL)
    assert validate_stream(split(data, cuts), SMALL) == expected
    assert validate_stream([data[i:i + 1] for i in range(len(data))], SMALL) == expected
    assert expected.sha256 == hashlib.sha256(data).hexdigest()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_random_bytes_never_crash(data, cuts):
    report = validate_stream(split(data, cuts), Limits(max_line_bytes=100, max_depth=4))
    assert report == validate_bytes(data, Limits(max_line_bytes=100, max_depth=4))
    assert report.errors + report.warnings == sum(report.issue_counts.values())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.sampled_from(["user", "assistant", "system", "messages", "content", "role"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "weight", "name", "prompt", "completion",
                         "text", "x"]), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=8), st.sampled_from([None, *Format]))
def test_random_json_never_crashes(values, fmt):
    data = b"\n".join(json.dumps(v).encode() for v in values)
    report = validate_bytes(data, Limits(max_depth=5), fmt)
    assert all(i.severity is SEVERITY[i.code] for i in report.issues)
    assert report.stats.examples + report.stats.invalid_examples == len(values)
    if report.ok:
        assert report.stats.examples == len(values)


# -- the orjson fast path and the compact duplicate index ------------------------------------


def reference(data: bytes, limits: Limits | None = None, fmt: Format | None = None) -> Report:
    """The report of the stdlib-json reference path alone (the orjson fast path switched off)."""
    validator = Validator(limits, fmt)
    validator._quick = lambda stripped: None
    validator.feed(data)
    return validator.finish()


EDGE_LINES = [
    line(GOOD), line(GOOD2), line({"text": "t"}), line({"prompt": "", "completion": "c"}),
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": NaN}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1e400}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": '
    + str(2 ** 64).encode() + b"}]}",
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": '
    + b"1" * 30 + b"}]}",
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 1.0}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": true}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}',
    b'{"messages": [{"role": "user", "content": "q", "role": "assistant", "content": "a"}]}',  # duplicate keys
    b'{"messages": [{"role": "user", "content": "q"}], "messages": [{"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "q\\ud800"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "q\\udc00\\ud800"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "caf\xc3"}, {"role": "assistant", "content": "a"}]}',
    b'{"messages": [{"role": "user", "content": "\\u2028\\u00a0"}, {"role": "assistant", "content": "\\u3000"}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a\x1f"}]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},]}',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]} x',
    b'{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "name": "b"}]}',
    b'{"messages": [{"role": "assistant", "content": " \\t"}]}', b'{"messages": []}', b'{"messages": [1]}',
    b'{"text": " \\n"}', b'{"text": "\\u00e9", "text": "x"}', b'{"prompt": "p", "completion": "\\u2003"}',
    b'{"prompt": 1e400, "completion": "c"}', b"\xef\xbb\xbf" + line(GOOD), b"\t" + line(GOOD) + b" \r",
]


@pytest.mark.parametrize("fmt", [None, *Format])
def test_fast_path_reports_exactly_what_the_reference_path_reports(fmt):
    for edge in EDGE_LINES:
        for data in (jsonl(GOOD, edge), jsonl({"text": "t"}, edge), jsonl({"prompt": "p", "completion": "c"}, edge),
                     jsonl(edge, edge, GOOD)):
            assert validate_bytes(data, format=fmt) == reference(data, fmt=fmt), data


def test_edge_cases_keep_their_codes_and_messages():
    lines = [line(GOOD), *EDGE_LINES[4:11], EDGE_LINES[13], EDGE_LINES[15]]
    r = validate_bytes(jsonl(*lines))
    got = [(i.line, i.code, i.path) for i in r.issues if i.severity is Severity.ERROR]
    weight = "messages[1].weight"
    assert got == [(2, Code.INVALID_JSON, ""), (3, Code.INVALID_WEIGHT, weight), (4, Code.INVALID_WEIGHT, weight),
                   (5, Code.INVALID_WEIGHT, weight), (6, Code.INVALID_WEIGHT, weight),
                   (7, Code.INVALID_WEIGHT, weight), (9, Code.INVALID_UTF8, "messages[0].content"),
                   (10, Code.INVALID_UTF8, "")]
    messages = [i.message for i in r.issues if i.severity is Severity.ERROR]
    assert "NaN is not a JSON value" in messages[0]
    assert "found Infinity" in messages[1]
    assert f"found {2 ** 64}" in messages[2]  # the exact integer, not orjson's float
    assert 8 in [i.line for i in r.issues if i.code == Code.ZERO_WEIGHT]


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values, min_size=1, max_size=8), st.sampled_from([None, *Format]))
def test_fast_path_matches_the_reference_on_random_json(values, fmt):
    data = b"\n".join(json.dumps(v).encode() for v in values)
    assert validate_bytes(data, Limits(max_depth=5), fmt) == reference(data, Limits(max_depth=5), fmt)


def test_duplicates_across_chunks_and_index_growth():
    examples = [chat(("user", f"question {k}"), ("assistant", f"answer {k}")) for k in range(5000)]
    lines = [line(e) for e in examples] + [line(examples[0]), b" " + line(examples[2500]), line(examples[4999])]
    data = jsonl(*lines)
    chunks = [data[k:k + 4096] for k in range(0, len(data), 4096)]  # lines cut across chunk boundaries
    r = validate_stream(chunks)
    dups = [i for i in r.issues if i.code == Code.DUPLICATE_EXAMPLE]
    assert [(i.line, i.offset) for i in dups] == [(5001 + k, sum(len(ln) + 1 for ln in lines[:5000 + k]))
                                                  for k in range(3)]
    assert [int(i.message.split("line ")[1].split(";")[0]) for i in dups] == [1, 2501, 5000]
    assert r.stats.duplicates == 3 and r.stats.examples == 5003
    assert r == reference(data)

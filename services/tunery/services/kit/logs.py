"""structlog, configured once per process: JSON or console, with context variables (request id, job) bound.

Loggers are cached on first use (every RPC logs a line, and building a logger per line showed in the cost of
short calls). configure() therefore changes the one processor list and the one output in place: a cached
logger holds both, and tests reconfigure the stream and level at run time.
"""

from __future__ import annotations

import json
import logging
import sys
import threading

import orjson
import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners swap it and close the old one)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _Output:
    """The logger every structlog logger wraps: one write and a flush per line, so a killed process loses none."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self._lock = threading.Lock()  # text streams are not thread-safe

    def msg(self, message: str) -> None:
        with self._lock:
            self.stream.write(message + "\n")
            self.stream.flush()

    debug = info = warning = error = critical = msg


def _json(event: dict, **_) -> str:
    # orjson: every RPC writes a line, and the stdlib encoder made it a visible part of a short call's cost.
    # Values it cannot encode become their repr, as with structlog's default renderer; integers beyond 64 bits
    # (which orjson refuses) take the stdlib path.
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, default=repr)


_LEVELS = {name.lower(): number for name, number in logging.getLevelNamesMapping().items()}


def _at_least(level: str):
    """A processor that drops events below `level` and adds the level to the others (the cached loggers'
    class is fixed, so the level cannot be in it)."""
    minimum = _LEVELS[level.lower()]

    def processor(_, method_name: str, event_dict: dict) -> dict:
        if _LEVELS[method_name] < minimum:
            raise structlog.DropEvent
        event_dict["level"] = method_name
        return event_dict
    return processor


_TIMESTAMP = structlog.processors.TimeStamper(fmt="iso", utc=True)


def _processors(log_format: str, level: str) -> list:
    renderer = (structlog.processors.JSONRenderer(serializer=_json) if log_format == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    return [_at_least(level), structlog.contextvars.merge_contextvars, _TIMESTAMP,
            structlog.processors.format_exc_info, renderer]


def configure(log_format: str = "console", level: str = "info", stream=None) -> None:
    """Route structlog and the standard library's logging to one stream in one format."""
    _output.stream = stream or _CurrentStderr()
    _chain[:] = _processors(log_format, level)
    handler = logging.StreamHandler(_output.stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=_chain[-1], foreign_pre_chain=[
        structlog.contextvars.merge_contextvars, structlog.processors.add_log_level, _TIMESTAMP,
        structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries stay quiet unless they warn


# Until configure() runs, structlog logs as configure()'s defaults say.
_output = _Output(_CurrentStderr())
_chain = _processors("console", "info")
structlog.configure(processors=_chain, wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
                    logger_factory=lambda *_: _output, cache_logger_on_first_use=True)

log = structlog.get_logger("tunery")

"""structlog, configured once per process: JSON or console, with context variables (request id, job) bound."""

from __future__ import annotations

import json
import logging
import sys

import orjson
import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test runners swap it and close the old one)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _json(event: dict, **_) -> str:
    # orjson: every RPC writes a line, and the stdlib encoder made it a visible part of a short call's cost.
    # Values it cannot encode become their repr, as with structlog's default renderer; integers beyond 64 bits
    # (which orjson refuses) take the stdlib path.
    try:
        return orjson.dumps(event, default=repr, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event, default=repr)


def configure(log_format: str = "console", level: str = "info", stream=None) -> None:
    """Route structlog and the standard library's logging to one stream in one format."""
    stream = stream or _CurrentStderr()
    renderer = (structlog.processors.JSONRenderer(serializer=_json) if log_format == "json"
                else structlog.dev.ConsoleRenderer(colors=False))
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)  # libraries stay quiet unless they warn


log = structlog.get_logger("tunery")

"""Resource names (`projects/{project}/datasets/{dataset}` …) parsed against their patterns."""

from __future__ import annotations

import re
from functools import lru_cache

from tunery.services.kit.errors import InvalidArgument

# User-chosen ids: lower-case letters, digits and hyphens, starting with a letter.
ID = r"[a-z][a-z0-9-]{0,62}"


@lru_cache(maxsize=None)
def _compile(pattern: str, id_patterns: tuple[tuple[str, str], ...]) -> re.Pattern:
    special = dict(id_patterns)
    regex = re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>{special.get(m.group(1), ID)})", pattern)
    return re.compile(regex)


def parse(name: str, pattern: str, field: str = "name", **id_patterns: str) -> dict[str, str]:
    """The variables of `name`, or INVALID_ARGUMENT naming `field` and the expected shape."""
    match = _compile(pattern, tuple(sorted(id_patterns.items()))).fullmatch(name or "")
    if not match:
        raise InvalidArgument.field(field, f"{name!r} is not a valid name: expected {pattern} "
                                           f"(ids: lower-case letters, digits, '-', starting with a letter)",
                                    "INVALID_NAME")
    return match.groupdict()


def check_id(value: str, field: str) -> str:
    if not re.fullmatch(ID, value or ""):
        raise InvalidArgument.field(field, f"{value!r} is not a valid id: use 1-63 lower-case letters, digits "
                                           f"or '-', starting with a letter", "INVALID_ID")
    return value

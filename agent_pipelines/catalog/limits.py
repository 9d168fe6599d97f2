"""Size limits on catalog input, set by the operator (environment), never by the catalog itself:
a catalog author must not be able to lift the bounds that protect everyone else's tasks."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILE_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_PROMPT_CHARS = 100_000


def _from_environment(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
        if value <= 0:
            raise ValueError
    except ValueError:
        logger.warning("%s=%r is not a positive integer; using %s", name, raw, default)
        return default
    return value


def max_file_bytes() -> int:
    """Catalog files larger than this are refused (`AGENT_PIPELINES_MAX_CATALOG_FILE_BYTES`)."""
    return _from_environment("AGENT_PIPELINES_MAX_CATALOG_FILE_BYTES", DEFAULT_MAX_FILE_BYTES)


def max_prompt_chars() -> int:
    """A task's `prompt` or `system` longer than this is refused (`AGENT_PIPELINES_MAX_PROMPT_CHARS`)."""
    return _from_environment("AGENT_PIPELINES_MAX_PROMPT_CHARS", DEFAULT_MAX_PROMPT_CHARS)

"""A channel's URL, read from the environment at delivery time, and the redaction of its secrets.

The URL is resolved for each delivery (never cached), so a rotated secret applies at once; every
text that may carry it (apprise's log lines, exceptions) goes through `redact` before it is
stored or logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from agent_pipelines.catalog.notifications import ENV_REFERENCE, TOKEN_IN_URL_SCHEMES, ChannelSpec

REDACTED = "***"


class ChannelUnavailable(Exception):
    """The channel cannot be used in this environment (its variable is unset): not worth retrying."""


@dataclass(frozen=True)
class ResolvedChannel:
    url: str
    secrets: tuple[str, ...]

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


def resolve(channel: ChannelSpec, environ: Mapping[str, str] | None = None, timeout_s: float | None = None) -> ResolvedChannel:
    """The channel's apprise URL with its variables read now, and the values to redact."""
    env = os.environ if environ is None else environ
    if channel.url_env is not None:
        url = env.get(channel.url_env, "").strip()
        if not url:
            raise ChannelUnavailable(f"channel {channel.name!r}: ${channel.url_env} is not set")
        secrets = [url]
    else:
        names = ENV_REFERENCE.findall(channel.url or "")
        missing = [name for name in names if not env.get(name)]
        if missing:
            raise ChannelUnavailable(f"channel {channel.name!r}: ${', $'.join(missing)} not set")
        secrets = [env[name] for name in names]
        url = ENV_REFERENCE.sub(lambda m: env[m.group(1)], channel.url or "")
    secrets += _url_secrets(url)
    if timeout_s is not None:
        url = with_timeouts(url, timeout_s)
    return ResolvedChannel(url=url, secrets=tuple(s for s in {*secrets, url} if len(s) >= 4))


def with_timeouts(url: str, timeout_s: float) -> str:
    """apprise's connect (`cto`) and read (`rto`) timeouts, unless the URL sets its own."""
    query = urlsplit(url).query
    extra = [f"{name}={timeout_s:g}" for name in ("cto", "rto") if not re.search(rf"(^|&){name}=", query)]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def _url_secrets(url: str) -> list[str]:
    """Where a resolved URL keeps its tokens: the password, long path segments, and for services
    whose URL is the credential (Slack, DingTalk, ...) everything after the scheme."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if parts.scheme.lower() in TOKEN_IN_URL_SCHEMES:
        return [parts.netloc, *(segment for segment in parts.path.split("/") if len(segment) >= 4)]
    return [parts.password or "", *(segment for segment in parts.path.split("/") if len(segment) >= 12)]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text

"""Durable streams: the names, limits and token scopes (pure; the runtime publishes, the store
keeps items, the server serves them as Server-Sent Events).

The model is Inngest realtime's: a **channel** (a run's own, `run:<run id>`, or any name you
choose, such as `user:42`) carries items, each with a **topic** (`tokens`, `status`, ...).
Items get offsets 1, 2, 3... per channel; a subscriber resumes after the last offset it saw.

Retried steps: an item published inside a step body belongs to that step attempt. When an
attempt fails (or an execution died in the middle of it), a marker item with topic
`stepwell/retracted` and data `{"run_id", "step", "attempt"}` follows: a subscriber drops the
items of that run, step and attempt published before the marker. So what a subscriber keeps
is what the successful attempts published, each once.
"""

from __future__ import annotations

import re
from typing import Any

RETRACTED_TOPIC = "stepwell/retracted"
TOKEN_KIND = "stream"
MAX_NAME = 200
MAX_ITEM_BYTES = 512 * 1024
MAX_TOKEN_TTL_MS = 7 * 24 * 3600 * 1000
_NAME = re.compile(r"[A-Za-z0-9._:/@+=-]+")
ALLOWED = "letters, digits and . _ : / @ + = -"


class StreamNameError(ValueError):
    """A channel or topic name that is empty, too long or has other characters."""


def run_channel(run_id: str) -> str:
    """The channel a run publishes to by default."""
    return f"run:{run_id}"


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise StreamNameError(f"a stream {what} must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME:
        raise StreamNameError(f"stream {what} {name[:40]!r}... is longer than {MAX_NAME} "
                              "characters")
    if not _NAME.fullmatch(name):
        raise StreamNameError(f"stream {what} {name!r} may only have {ALLOWED}")
    return name


def token_claims(channel: str, topics: list[str] | None) -> dict[str, Any]:
    """What a subscription token signs: the channel, and the topics it may see (None: all)."""
    check_name("channel", channel)
    if topics is not None:
        if not isinstance(topics, list) or not topics:
            raise StreamNameError("topics must be a non-empty list of names, or omitted")
        topics = [check_name("topic", t) for t in topics]
    return {"kind": TOKEN_KIND, "channel": channel, "topics": topics}


def granted_topics(claims: dict[str, Any], channel: str) -> set[str] | None:
    """The topics verified `claims` let their holder read on `channel` (None: every topic).
    PermissionError says why a token does not open this channel."""
    if claims.get("kind") != TOKEN_KIND:
        raise PermissionError("this token is not a stream subscription token")
    if claims.get("channel") != channel:
        raise PermissionError(f"this token is for channel {claims.get('channel')!r}, "
                              f"not {channel!r}")
    topics = claims.get("topics")
    return None if topics is None else {str(t) for t in topics}


def visible(topic: str, topics: set[str] | None) -> bool:
    """Whether a subscriber limited to `topics` gets an item (retraction markers always)."""
    return topics is None or topic in topics or topic == RETRACTED_TOPIC

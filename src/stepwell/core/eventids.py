"""Event ids derived from the official SDKs' `x-inngest-event-id-seed` header.

Both official SDKs send `x-inngest-event-id-seed: <epoch ms>,<base64 of 10 random bytes>` with
every send and keep the same header when they retry it (after a timeout, a dropped connection
or a 5xx). Inngest derives each event's id from it as a ULID: the seed's milliseconds as the
timestamp, and as entropy the 10 bytes with the event's 1-based position in the request added
to their last four (big-endian, wrapping). A retried request therefore names the same events
by the same ids, and stepwell's 24-hour de-duplication by event id stores each once and starts
its runs once. A header that is not of that form is ignored, as Inngest ignores it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii

from ulid import ULID

ENTROPY_BYTES = 10
MAX_ULID_MS = 2**48 - 1


def parse_seed(value: str | None) -> tuple[int, bytes] | None:
    """The seed's (milliseconds, entropy), or None when the header is absent or malformed."""
    if not value:
        return None
    parts = value.split(",")
    if len(parts) != 2:
        return None
    millis_text, entropy_text = parts[0].strip(), parts[1].strip()
    if not millis_text.isascii() or not millis_text.isdigit():
        return None
    millis = int(millis_text)
    if not 0 < millis <= MAX_ULID_MS:
        return None
    try:
        entropy = base64.b64decode(entropy_text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(entropy) != ENTROPY_BYTES:
        return None
    return millis, entropy


def seeded_id(seed: tuple[int, bytes], index: int) -> str:
    """The ULID of the event at 1-based `index` of a request sent with `seed`."""
    millis, entropy = seed
    counter = (int.from_bytes(entropy[6:10], "big") + index) % 2**32
    raw = millis.to_bytes(6, "big") + entropy[:6] + counter.to_bytes(4, "big")
    return str(ULID.from_bytes(raw))

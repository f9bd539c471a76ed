"""URLs as shown to people (banners, errors, logs): never with the password they may carry."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

DEFAULT_DB = "sqlite:///.stepwell/stepwell.db"
"""The database every command and `Engine()` use when given none: a SQLite file in the current
directory's `.stepwell/` (defined here, in a module with no heavy imports, so the CLI's option
defaults do not have to import the engine)."""


def redact(url: str) -> str:
    """The URL without its password (`postgresql://user:***@host/db`)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable database URL>"
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))

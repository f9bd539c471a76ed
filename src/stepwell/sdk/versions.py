"""The version of a function's code that a run starts on.

An explicit `version=` (on the app or the function) is what a team controls: a release tag, a
git sha. Without one, the version is a fingerprint of the handler's code: its bytecode, the
constants and names it uses, and the same of every function or lambda defined inside it
(step bodies written inline). Not covered: line numbers and comments (moving code within the
file keeps the version), and code the handler calls by name (a module-level helper, a library):
changing only those keeps the fingerprint, so give an explicit version if such changes matter.
"""

from __future__ import annotations

import hashlib
from types import CodeType
from typing import Any


def _feed(digest: Any, code: CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed(digest, const)
        else:
            digest.update(repr(const).encode())


def code_fingerprint(handler: Any) -> str:
    """`code:<12 hex>` for a handler's code (see the module docstring); `code:unknown` for a
    callable without Python code (a builtin, a C extension)."""
    code = getattr(getattr(handler, "__func__", handler), "__code__", None)
    if not isinstance(code, CodeType):
        return "code:unknown"
    digest = hashlib.sha1(usedforsecurity=False)
    _feed(digest, code)
    return f"code:{digest.hexdigest()[:12]}"


def check_version(owner: str, version: object) -> str | None:
    """A `version=` option: None or a short printable string."""
    from stepwell.core.config import ConfigError

    if version is None:
        return None
    if not isinstance(version, str) or not version.strip() or len(version) > 64 \
            or not version.isprintable():
        raise ConfigError(f"{owner}: version must be a non-empty printable string of at most "
                          f"64 characters (a release tag or commit), got {version!r}")
    return version


UPGRADES = ("auto", "pinned")
DEFAULT_UPGRADE = "auto"


def check_upgrade(owner: str, upgrade: object) -> str | None:
    """An `upgrade=` option: None (inherit) or one of `UPGRADES`."""
    from stepwell.core.config import ConfigError

    if upgrade is None or upgrade in UPGRADES:
        return upgrade
    raise ConfigError(f"{owner}: upgrade must be 'auto' (a run may move to a worker of newer "
                      "code once its version has no live worker and the replay check passes) "
                      f"or 'pinned' (it only ever runs on its own version), got {upgrade!r}")

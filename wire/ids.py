"""Device and identity names: one string is the certificate CN, MQTT client id and topic segment."""

from __future__ import annotations

import re

from canvoy.wire.errors import InvalidIdentityError

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def check_id(name: str, what: str = "device id") -> str:
    """Return ``name`` if it is a valid identity name.

    Raises:
        InvalidIdentityError: the name is empty, too long or has other characters.
    """
    if not isinstance(name, str) or ID_PATTERN.fullmatch(name) is None:
        raise InvalidIdentityError(f"{what} {name!r} is invalid: use 1-64 of [A-Za-z0-9_-]")
    return name

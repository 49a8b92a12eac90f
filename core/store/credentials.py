"""Passwords and API keys, never kept in clear: passwords hashed with argon2id (memory-hard, salted, its
parameters in the hash), keys random (256 bits) and kept as their sha256, which a lookup can match at once.

A fast hash is right for keys and wrong for passwords: a key has 256 random bits, so nothing guesses it from
its hash; a password has few, so only a slow, memory-hard hash keeps a stolen table from giving them away.
"""

from __future__ import annotations

import hashlib
import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

KEY_PREFIX = "rpt_"
MIN_PASSWORD = 8

# argon2id with OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): a login costs tens of milliseconds, a
# guess on a stolen hash as much, in memory no GPU has to spare by the million.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


@cache
def _dummy() -> str:
    """A hash to check against for an unknown name, so that it costs the same time as a wrong password."""
    return _hasher.hash(secrets.token_hex(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    try:
        return _hasher.verify(stored or _dummy(), password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_prefix(key: str) -> str:
    """The part of a key that lists may show, to tell keys apart (8 characters after the prefix: 48 bits)."""
    return key[:len(KEY_PREFIX) + 8]

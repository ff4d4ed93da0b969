"""Bearer tokens of the HTTP API with their role (auditor: read only; operator: also acts).

A token is 32 random bytes, shown once when created; only its SHA-256 is stored, so a copy of the
database does not hand out access. Revoking keeps the row (who had access, until when).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pgerr

from eventstore.core.errors import ConfigurationError
from eventstore.postgres.connection import converted_errors

ROLES = ("auditor", "operator")
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
ADD = "INSERT INTO api_tokens (name, role, token_sha256) VALUES (%s, %s, %s)"
LIST = "SELECT name, role, created_at, revoked_at FROM api_tokens ORDER BY name"
REVOKE = "UPDATE api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL RETURNING name"
LOOKUP = "SELECT name, role FROM api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL"


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str
    created_at: datetime | None = None
    revoked_at: datetime | None = None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add(conn: psycopg.Connection[Any], name: str, role: str) -> str:
    """Create a token and return it (the only time it is visible)."""
    if not NAME_RE.match(name):
        raise ConfigurationError(f"token name {name[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'")
    if role not in ROLES:
        raise ConfigurationError(f"role {role!r} is not one of {', '.join(ROLES)}")
    token = "es_" + secrets.token_urlsafe(32)
    try:
        with conn.transaction():
            conn.execute(ADD, (name, role, digest(token)))
    except pgerr.UniqueViolation as e:
        raise ConfigurationError(f"a token named {name!r} exists already; revoke it or pick another name") from e
    except psycopg.Error as e:
        with converted_errors():
            raise e
    return token


def list_tokens(conn: psycopg.Connection[Any]) -> list[TokenInfo]:
    with converted_errors():
        return [TokenInfo(str(n), str(r), c, v) for n, r, c, v in conn.execute(LIST).fetchall()]


def revoke(conn: psycopg.Connection[Any], name: str) -> bool:
    """Revoke a token by name; False if there is no active token of that name."""
    with converted_errors(), conn.transaction():
        return conn.execute(REVOKE, (name,)).fetchone() is not None


def lookup(conn: psycopg.Connection[Any], token: str) -> TokenInfo | None:
    """The active token's name and role, or None (unknown or revoked)."""
    if not token or len(token) > 200:
        return None
    with converted_errors():
        row = conn.execute(LOOKUP, (digest(token),)).fetchone()
    return None if row is None else TokenInfo(str(row[0]), str(row[1]))

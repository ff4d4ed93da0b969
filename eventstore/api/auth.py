"""Bearer tokens with roles: an auditor reads, an operator reads and acts (kill, revive, release).

No token or an unknown/revoked one: 401. A known token without the role: 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from eventstore.api.state import state
from eventstore.postgres import tokens
from eventstore.postgres.tokens import TokenInfo

bearer = HTTPBearer(auto_error=False, description="a token from `eventstore tokens add NAME --role ROLE`")
RANK = {"auditor": 1, "operator": 2}


def require(role: str) -> Callable[..., TokenInfo]:
    """A dependency admitting tokens of ``role`` or a stronger one."""

    def check(request: Request,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> TokenInfo:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        with state(request).conn() as conn:
            info = tokens.lookup(conn, creds.credentials)
        if info is None:
            raise HTTPException(401, "unknown or revoked token", headers={"WWW-Authenticate": "Bearer"})
        if RANK[info.role] < RANK[role]:
            raise HTTPException(403, f"token {info.name!r} has role {info.role}; this needs {role}")
        return info

    return check


Auditor = Annotated[TokenInfo, Depends(require("auditor"))]
Operator = Annotated[TokenInfo, Depends(require("operator"))]

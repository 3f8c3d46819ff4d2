"""Bearer-token authentication: each source system has its own token (REFLOOP_API_TOKENS,
`system=token,...`); the system a token belongs to becomes the event `source` and the inbox
`sender`.

Safe default: with no tokens configured the API is open only when bound to a loopback address
(development on one machine; requests are then attributed to the system `dev`). Bound to any
other address without tokens, the gateway refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from refloop.config import Settings
from refloop.gateways.http.problems import ApiError

DEV_SYSTEM = "dev"

bearer = HTTPBearer(auto_error=False, description="One token per source system (REFLOOP_API_TOKENS=system=token,...)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AuthNotConfigured(RuntimeError):
    pass


class TokenAuth:
    def __init__(self, settings: Settings):
        self.tokens = settings.tokens()
        self.open = not self.tokens
        if self.open and not is_loopback(settings.bind_host):
            raise AuthNotConfigured(
                f"the HTTP API would be open on {settings.bind_host}: set REFLOOP_API_TOKENS (system=token,...) "
                "or bind to a loopback address"
            )

    def system(self, credentials: HTTPAuthorizationCredentials | None) -> str:
        if self.open:
            return DEV_SYSTEM
        if credentials is None or not credentials.credentials:
            raise ApiError(
                401,
                "Missing bearer token",
                "send 'Authorization: Bearer <token>' with the token issued to your system",
                slug="missing-token",
                fhir_code="login",
                headers={"WWW-Authenticate": 'Bearer realm="refloop"'},
            )
        presented = credentials.credentials.encode()
        for token, system in self.tokens.items():  # constant-time comparison per token
            if hmac.compare_digest(presented, token.encode()):
                return system
        raise ApiError(403, "Unknown token", "the bearer token belongs to no configured source system", slug="unknown-token", fhir_code="forbidden")


async def current_system(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> str:
    """FastAPI dependency: the authenticated source system. Extra routers may depend on it too."""
    auth: TokenAuth = request.app.state.auth
    return auth.system(credentials)

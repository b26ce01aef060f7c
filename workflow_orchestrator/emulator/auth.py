"""OAuth2 for the Manager emulator: a client-credentials token endpoint and bearer checks.

OpenAperture's auth server takes a JSON body; standard servers take a form body or HTTP
basic credentials: all three are accepted. The real Manager answers a missing or invalid
bearer token with ``401 Unauthorized`` (plain text, no ``WWW-Authenticate``). Neither the
client secret nor any token is ever logged.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import time
from email.message import Message
from typing import Any
from urllib.parse import unquote

from .http import HTTPProblem, Request, Response, parse_form


class Tokens:
    """Issued access tokens and their expiry (monotonic clock)."""

    def __init__(self, client_id: str, client_secret: str, ttl: float) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self.ttl = ttl
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}

    def issue(self) -> str:
        """A new valid token."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = time.monotonic() + self.ttl
        return token

    def expire_all(self) -> None:
        """Invalidate every issued token."""
        with self._lock:
            self._tokens.clear()

    def authorized(self, headers: Message) -> bool:
        """Whether the request carries a live bearer token."""
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        with self._lock:
            expires = self._tokens.get(token)
            if expires is None:
                return False
            if time.monotonic() >= expires:
                del self._tokens[token]
                return False
        return True

    def credentials_match(self, client_id: Any, client_secret: Any) -> bool:
        """Constant-time check of the client credentials."""
        return (
            isinstance(client_id, str)
            and isinstance(client_secret, str)
            and hmac.compare_digest(client_id.encode(), self.client_id.encode())
            and hmac.compare_digest(client_secret.encode(), self._client_secret.encode())
        )


def unauthorized() -> Response:
    """The real Manager's answer to a request without a valid token."""
    return Response.text(401, "Unauthorized")


def token_endpoint(tokens: Tokens, req: Request) -> Response:
    """Client credentials grant: JSON body (OpenAperture), form body or HTTP basic."""
    form = _token_params(req)
    client_id = form.get("client_id")
    client_secret = form.get("client_secret")
    scheme, _, encoded = req.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return Response.json(400, {"error": "invalid_request"})
        user, _, password = decoded.partition(":")
        client_id, client_secret = unquote(user), unquote(password)
    if form.get("grant_type") != "client_credentials":
        return Response.json(400, {"error": "unsupported_grant_type"})
    if not tokens.credentials_match(client_id, client_secret):
        return Response.json(401, {"error": "invalid_client"})
    payload = {"access_token": tokens.issue(), "token_type": "bearer", "expires_in": tokens.ttl}
    return Response.json(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"})


def _token_params(req: Request) -> dict[str, Any]:
    content_type = req.headers.get_content_type()
    if content_type == "application/x-www-form-urlencoded":
        return parse_form(req.body)
    try:
        value = json.loads(req.body.decode("utf-8")) if req.body.strip() else {}
    except (UnicodeDecodeError, ValueError):
        if content_type == "application/json":
            raise HTTPProblem(Response.json(400, {"error": "invalid_request"})) from None
        return parse_form(req.body)
    return value if isinstance(value, dict) else {}

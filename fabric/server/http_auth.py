"""Who may use the HTTP gateway: bearer tokens read from files, and the TLS context it serves.

A token file holds one token a line (blank lines and ``#`` comments skipped): every line is
accepted, so a token is rotated by adding the new one, moving the clients over, then removing
the old one (and restarting the node: the file is read at start). ``/health`` is open to all
(container health checks, load balancers); ``/metrics`` takes the full token or the separate
read-only metrics token (a Prometheus scraper's, good for nothing else); every other route
takes the full token only.
"""

from __future__ import annotations

import hmac
import ssl

from syncfab.fabric.client.token_file import TokenFileError, first_token, read_tokens

__all__ = ["TokenCheck", "TokenFileError", "first_token", "read_tokens", "server_tls_context"]

OPEN_PATHS = frozenset({"/health"})
METRICS_PATH = "/metrics"
BEARER = "bearer "
# What a refused client is told to send (RFC 6750 §3).
WWW_AUTHENTICATE = 'Bearer realm="syncfab"'


def _matches(given: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Constant time in the token's value: every token compared, none short-circuited."""
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given, token)
    return found


class TokenCheck:
    """Whether a request's ``Authorization`` header lets it reach a path."""

    def __init__(self, tokens: tuple[bytes, ...], metrics_tokens: tuple[bytes, ...] = ()) -> None:
        if not tokens:
            raise ValueError("a TokenCheck needs at least one token")
        self.tokens = tokens
        self.metrics_tokens = metrics_tokens

    def allows(self, path: str, authorization: str | None) -> bool:
        if path in OPEN_PATHS:
            return True
        if authorization is None or authorization[: len(BEARER)].lower() != BEARER:
            return False
        given = authorization[len(BEARER) :].strip().encode("latin-1")
        if path == METRICS_PATH and self.metrics_tokens and _matches(given, self.metrics_tokens):
            return True
        return _matches(given, self.tokens)


def server_tls_context(cert_path: str, key_path: str) -> ssl.SSLContext:
    """The gateway's TLS: the certificate chain and key given, TLS 1.2 at least."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_path, key_path)
    return context

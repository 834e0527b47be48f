"""Bearer token files, as the gateway reads its own and a client reads the one it sends: one
token a line, blank lines and ``#`` comments skipped (fabric/server/http_auth.py says why)."""

from __future__ import annotations


class TokenFileError(ValueError):
    pass


def read_tokens(path: str) -> tuple[bytes, ...]:
    """Every token in the file at ``path``; at least one, or TokenFileError saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenFileError(f"cannot read token file {path!r}: {e}") from e
    tokens = tuple(t.encode() for t in (line.strip() for line in lines) if t and not t.startswith("#"))
    if not tokens:
        raise TokenFileError(f"token file {path!r} holds no token")
    if any(len(t.split()) != 1 for t in tokens):
        raise TokenFileError(f"token file {path!r}: a token is one word, one a line")
    return tokens


def first_token(path: str) -> str:
    """What a client sends: the file's first token (the newest, by convention, in a rotation)."""
    return read_tokens(path)[0].decode()

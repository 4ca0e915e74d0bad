"""Credentials and TLS settings for everything in jit_embedding that talks to a server.

A server configured with tokens (``server.auth`` in its YAML, docs/security.md) wants
``Authorization: Bearer <token>`` on every route but ``/health/live``, and the admin token on the
admin routes (load, unload, drain, cache prune). Tokens are secrets, so they never travel as
command-line arguments (any local user can read ``/proc/<pid>/cmdline``): clients and the CLI read
them from the environment, either the token itself or a file holding it.

Environment variables (each optional):

=================================  ================================================================
``JIT_EMBEDDING_AUTH_TOKEN``       the token
``JIT_EMBEDDING_AUTH_TOKEN_FILE``  a file holding it (used when the variable above is unset)
``JIT_EMBEDDING_ADMIN_TOKEN``      the admin token (``jit-embedding cache prune``, ``ray update``)
``JIT_EMBEDDING_ADMIN_TOKEN_FILE`` a file holding it
``JIT_EMBEDDING_TLS_CA_FILE``      PEM bundle that signs the servers' certificates (https:// URLs);
                                   unset: the system's CA store
=================================  ================================================================
"""

from __future__ import annotations

import os
import ssl

AUTH_TOKEN_ENV = "JIT_EMBEDDING_AUTH_TOKEN"
ADMIN_TOKEN_ENV = "JIT_EMBEDDING_ADMIN_TOKEN"
TLS_CA_FILE_ENV = "JIT_EMBEDDING_TLS_CA_FILE"


def read_token_file(path: str, what: str = "token file") -> str:
    """The token in ``path``, without trailing whitespace.

    Raises:
        ValueError: the file cannot be read, is empty, or holds whitespace or control characters
            inside the token.
    """
    try:
        with open(path, encoding="ascii") as f:
            token = f.read().rstrip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} {path}: cannot read it ({e})") from None
    return _checked(token, f"{what} {path}")


def token_from_env(name: str) -> str | None:
    """The token in ``$name``, else in the file ``$name_FILE``, else None.

    Raises:
        ValueError: the variable or file holds something that cannot be a token.
    """
    value = os.environ.get(name)
    if value is not None:
        return _checked(value.rstrip(), f"${name}")
    path = os.environ.get(name + "_FILE")
    if path:
        return read_token_file(path, f"${name}_FILE")
    return None


def auth_token(explicit: str | None = None) -> str | None:
    """``explicit`` when given, else the user token from the environment (see the module doc)."""
    return _checked(explicit, "auth_token") if explicit is not None else token_from_env(AUTH_TOKEN_ENV)


def admin_token() -> str | None:
    """The admin token from the environment, or None."""
    return token_from_env(ADMIN_TOKEN_ENV)


def tls_ca_file(explicit: str | None = None) -> str | None:
    """``explicit`` when given, else ``$JIT_EMBEDDING_TLS_CA_FILE``, else None (the system store)."""
    return explicit if explicit is not None else (os.environ.get(TLS_CA_FILE_ENV) or None)


def ssl_context(ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client TLS context that verifies the server against ``ca_file`` (or the system store)."""
    ctx = ssl.create_default_context(cafile=tls_ca_file(ca_file))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def bearer_headers(token: str | None) -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}``, or ``{}`` without a token."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _checked(token: str, what: str) -> str:
    if not token:
        raise ValueError(f"{what}: the token is empty")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in token):
        raise ValueError(f"{what}: a token may hold only visible ASCII characters (no spaces or control bytes)")
    return token

"""Who may use the policy server: the bind rule (no token, loopback only), the token a client
presents, constant-time comparison, and tokens kept out of the logs."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from collections.abc import Mapping

MIN_TOKEN_CHARS = 16
TOKEN_ENV = "SF_SERVE_TOKEN"


class BindRefused(ValueError):
    """Serving on a non-loopback address without a (good enough) token."""



def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_token(token: str | None) -> str | None:
    """A token must be visible ASCII without spaces (it travels in a header)."""
    if token is None:
        return None
    if not re.fullmatch(r"[!-~]+", token):
        raise BindRefused("the token must be printable ASCII without spaces, e.g. "
                          "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def check_bind(host: str, token: str | None) -> None:
    """Refuse a non-loopback address without a token of at least ``MIN_TOKEN_CHARS`` characters."""
    check_token(token)
    if is_loopback(host):
        return
    if not token:
        raise BindRefused(
            f"refusing to serve on {host} without a token: anyone who can reach that address could run the "
            f"policy and read its metadata. Pass --token (or set {TOKEN_ENV}), e.g. "
            f"{TOKEN_ENV}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))'), "
            "or keep --host 127.0.0.1 and reach it through an SSH tunnel")
    if len(token) < MIN_TOKEN_CHARS:
        raise BindRefused(f"the token is {len(token)} characters; serving on {host} needs at least "
                          f"{MIN_TOKEN_CHARS} (python -c 'import secrets; print(secrets.token_urlsafe(32))')")


def token_of(headers: Mapping[str, str], query: Mapping[str, str] | None = None) -> str | None:
    """The token a client presented: ``Authorization: Bearer <t>`` (or openpi's ``Api-Key <t>``),
    else ``?token=`` when ``query`` is given (websocket only)."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() in ("bearer", "api-key") and value.strip():
            return value.strip()
        return ""
    if query is not None:
        return query.get("token")
    return None


def authorized(expected: str | None, given: str | None) -> bool:
    if expected is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


class RedactTokens(logging.Filter):
    """Blank ``token=...`` in log lines (uvicorn logs a websocket's path with its query)."""

    pattern = re.compile(r"(token=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        # Redact inside the arguments and keep their shape: uvicorn's access formatter unpacks
        # record.args (5 of them), and replacing them by None printed "--- Logging error ---".
        if isinstance(record.args, tuple):
            record.args = tuple(self.pattern.sub(r"\1***", a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: self.pattern.sub(r"\1***", v) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = self.pattern.sub(r"\1***", record.msg)
        return True


def install_log_redaction() -> None:
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())

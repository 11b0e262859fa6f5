"""Webhook deliveries: how the region signs them and how a receiver checks
them.

A delivery is an HTTPS POST whose JSON body holds the region, the partner
and its next events, and whose ``Paymesh-Signature`` header reads
``t=<unix ms>,v1=<hex>[,v1=<hex>]``: each ``v1`` is HMAC-SHA256, under one
of the webhook's secrets, of the timestamp, a ``.`` and the body's exact
bytes (two during a secret rotation). Accept a delivery only when
:func:`verify` does; answer 2xx once it is stored; drop an event whose
``id`` you processed before (deliveries are at least once, in cursor
order)."""

import hashlib
import hmac
import json
import time
from typing import Iterable

#: The header carrying the signature.
SIGNATURE_HEADER = "Paymesh-Signature"
#: How far a delivery's timestamp may be from the receiver's clock by default.
DEFAULT_TOLERANCE_MS = 5 * 60 * 1000


class WebhookError(Exception):
    """A delivery that must not be accepted."""


def _mac(secret: str, timestamp_ms: int, body: bytes) -> bytes:
    return hmac.new(secret.encode(), str(timestamp_ms).encode() + b"." + body, hashlib.sha256).digest()


def sign(secrets: Iterable[str], timestamp_ms: int, body: bytes) -> str:
    """The header value of ``body`` sent at ``timestamp_ms``, signed with each
    secret in order (as the region signs)."""
    return ",".join([f"t={timestamp_ms}"] + [f"v1={_mac(s, timestamp_ms, body).hex()}" for s in secrets])


def verify(secrets: Iterable[str], signature: str, body: bytes, now_ms=None,
           tolerance_ms: int = DEFAULT_TOLERANCE_MS) -> dict:
    """Check a delivery: a ``v1`` in ``signature`` matches ``body`` under one
    of ``secrets`` (compared in constant time), and its timestamp is within
    ``tolerance_ms`` of ``now_ms`` (this clock by default). Returns the parsed
    body; raises :class:`WebhookError` otherwise."""
    timestamp = None
    macs = []
    for part in signature.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookError("malformed signature header: a part is not key=value")
        if key == "t":
            if not value.isdigit():
                raise WebhookError("malformed signature header: t is not a number")
            timestamp = int(value)
        elif key == "v1":
            try:
                macs.append(bytes.fromhex(value))
            except ValueError:
                raise WebhookError("malformed signature header: v1 is not hex") from None
    if timestamp is None or not macs:
        raise WebhookError("malformed signature header: t= and v1= are required")
    if not any(hmac.compare_digest(_mac(s, timestamp, body), m) for s in secrets for m in macs):
        raise WebhookError("no signature matches a secret held")
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - timestamp) > tolerance_ms:
        raise WebhookError(f"timestamp {timestamp} is more than {tolerance_ms} ms from now ({now_ms})")
    try:
        return json.loads(body)
    except ValueError as e:
        raise WebhookError(f"the body is not a delivery: {e}") from None

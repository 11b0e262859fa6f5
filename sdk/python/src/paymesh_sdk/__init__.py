"""The paymesh partner SDK for Python.

A partner talks to the nodes of its home region over mutual TLS.
:class:`Region` holds their addresses and the partner's certificate and
runs every call with the rules that keep it safe: a follower's UNAVAILABLE
names the leader (``paymesh-leader-id``, found at the address it answered
at, else ``paymesh-leader-addr``) and the call goes there at once;
UNAVAILABLE without a hint, DEADLINE_EXCEEDED and the transport's
transient codes are retried on the next node with capped exponential
backoff and jitter, within a bounded number of attempts and a deadline;
anything else is an answer, and so is an UNAVAILABLE marked
``paymesh-refused`` (the region refused at once, with no effect, because
the payee's region is known unreachable: try again later). Retrying a write is safe because it carries
its idempotency key, the same on every attempt. A node that did not answer
at all (its error names no ``paymesh-node-id``: no connection, a
connection that fell silent, found by an HTTP/2 keepalive of a second, or
no answer in time) is passed over for three seconds, and a follower's hint
naming it is not followed.

:class:`PartnerClient` wraps the partner API: one-call payments
(``create_payment``), quotes and transfers, batches of up to 500 payments in
one request (``create_payments``), reads, and an event stream that resumes
from its last cursor by itself (``events``). :mod:`paymesh_sdk.webhook`
verifies the region's webhook deliveries.
"""

from .client import Payer, PaymentItem, PartnerClient, PaymeshError, Region, RetryPolicy
from . import webhook

__all__ = ["Payer", "PaymentItem", "PartnerClient", "PaymeshError", "Region", "RetryPolicy", "webhook"]

"""Regions, retries and the partner API (see the package's documentation)."""

import dataclasses
import random
import threading
import time
import uuid
from typing import Iterator, List, Optional, Sequence

import grpc

from paymesh.common.v1 import common_pb2
from paymesh.partner.v1 import partner_pb2 as pb
from paymesh.partner.v1 import partner_pb2_grpc as pb_grpc

#: The metadata key a follower names the leader's API address in (the
#: address the leader's region knows it by, which a partner may not reach).
LEADER_ADDR = "paymesh-leader-addr"
#: The metadata key a follower names the leader's node id in.
LEADER_ID = "paymesh-leader-id"
#: The metadata key every answer of a node names that node's id in: an
#: error without it came from no node (a connection lost or refused, or no
#: answer in time).
NODE_ID = "paymesh-node-id"
#: The metadata key marking an UNAVAILABLE as the region's definite refusal
#: (``region-unreachable``): no effect, not retried.
REFUSED = "paymesh-refused"
#: The most items one CreateTransfers request carries.
ITEMS_PER_REQUEST_MAX = 500
#: How long a node that did not answer is passed over: calls start at the
#: others, and a follower's hint naming it leader is not followed (while a
#: leader's election is under way its followers still name the dead one).
SUSPECT_FOR_S = 3.0

_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.ABORTED,
}


class PaymeshError(Exception):
    """A call's final answer was a gRPC status other than OK (or no node
    answered within the retry policy): ``code`` and ``details`` say which."""

    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How long and how often a call is retried."""

    #: Attempts per call, the first included.
    attempts: int = 150
    #: The whole call, retries included, in seconds.
    deadline_s: float = 30.0
    #: One attempt, in seconds.
    attempt_timeout_s: float = 10.0
    #: The first backoff, doubled per retry up to ``backoff_max_s``, each
    #: drawn between half and all of it.
    backoff_first_s: float = 0.05
    #: The longest backoff.
    backoff_max_s: float = 0.25
    #: Connecting to a node, TCP and TLS together: a paused node's kernel
    #: still accepts TCP, and its handshake would otherwise hold the call.
    connect_timeout_s: float = 2.0
    #: HTTP/2 keepalive: a connection that brought nothing for this long is
    #: pinged, and closed when no answer comes within
    #: ``keepalive_timeout_s``, failing its calls (retried on another node)
    #: rather than leaving them to a node that died or froze.
    keepalive_interval_s: float = 1.0
    #: See ``keepalive_interval_s``.
    keepalive_timeout_s: float = 1.0


def _read(value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    with open(value, "rb") as f:
        return f.read()


class Region:
    """A region's nodes, and the partner's identity: ``ca`` (the region's CA
    certificate), ``cert`` and ``key`` (the partner's client certificate and
    key), each PEM bytes or a file path. Safe to share between threads."""

    def __init__(self, nodes: Sequence[str], ca, cert, key, retry: RetryPolicy = RetryPolicy()):
        if not nodes:
            raise ValueError("a region needs at least one node address")
        self.nodes = list(nodes)
        self.retry = retry
        self._credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca), private_key=_read(key), certificate_chain=_read(cert)
        )
        self._options = [
            ("grpc.keepalive_time_ms", int(retry.keepalive_interval_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(retry.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # A keepalive ping joins one already in flight (gRPC's own
            # flow-control probe), whose answer it then waits for under
            # this timeout (60 s by default), not the keepalive's.
            ("grpc.http2.ping_timeout_ms", int(retry.keepalive_timeout_s * 1000)),
            # gRPC's connect deadline is the larger of this and the
            # reconnect backoff, which is kept below it.
            ("grpc.min_reconnect_backoff_ms", int(retry.connect_timeout_s * 1000)),
            ("grpc.initial_reconnect_backoff_ms", int(retry.connect_timeout_s * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(retry.connect_timeout_s * 1000)),
        ]
        self._lock = threading.Lock()
        self._stubs = {}
        #: The node calls go to first: the last that answered or was named leader.
        self._preferred = None
        #: Nodes that did not answer, and when.
        self._suspects = {}
        #: Which node answered at which of ``nodes``, by node id.
        self._book = {}

    def close(self):
        """Close every channel."""
        with self._lock:
            for channel, _ in self._stubs.values():
                channel.close()
            self._stubs.clear()

    def _stub(self, addr):
        with self._lock:
            if addr not in self._stubs:
                channel = grpc.secure_channel(addr, self._credentials, options=self._options)
                self._stubs[addr] = (channel, pb_grpc.PartnerServiceStub(channel))
            return self._stubs[addr][1]

    def suspected(self, addr) -> bool:
        """Whether ``addr`` failed to answer within the last ``SUSPECT_FOR_S``."""
        with self._lock:
            return self._suspected(addr)

    def _suspected(self, addr):
        since = self._suspects.get(addr)
        return since is not None and time.monotonic() - since < SUSPECT_FOR_S

    def _pick(self, turn):
        """The node an attempt goes to: the preferred one unless suspected,
        else the next in turn (``turn[0]``) that is not suspected, or the
        next in turn when all are."""
        with self._lock:
            if self._preferred is not None and not self._suspected(self._preferred):
                return self._preferred
            count = len(self.nodes)
            order = [(turn[0] + k) % count for k in range(count)]
            at = next((i for i in order if not self._suspected(self.nodes[i])), order[0])
            turn[0] = at + 1
            return self.nodes[at]

    def _answered(self, addr, metadata):
        """``addr`` answered (``metadata`` its answer's): calls go there
        first, it is trusted again, and its node id is noted."""
        node = dict(metadata or ()).get(NODE_ID)
        with self._lock:
            self._preferred = addr
            self._suspects.pop(addr, None)
            if node is not None and addr in self.nodes:
                self._book[node] = addr

    def _failed(self, addr, error, turn):
        """An attempt at ``addr`` failed with ``error``, a retryable status:
        returns the leader a follower named, when it is to be followed
        (redirects are not failures); else ``addr`` is no longer preferred,
        is suspected when no node answered, and the call goes on with the
        node after it."""
        answer = dict(error.initial_metadata() or ())
        answer.update(dict(error.trailing_metadata() or ()))
        with self._lock:
            leader = self._book.get(answer.get(LEADER_ID)) or answer.get(LEADER_ADDR)
            if leader and leader != addr and not self._suspected(leader):
                self._preferred = leader
                return leader
            if self._preferred == addr:
                self._preferred = None
            if NODE_ID not in answer:
                self._suspects[addr] = time.monotonic()
            if addr in self.nodes:
                turn[0] = self.nodes.index(addr) + 1
        return None

    def _retry(self, attempt):
        """Call ``attempt(stub, timeout)``, which returns the answer and
        its call (for the answer's metadata), under the retry rules; the
        answer and the node that gave it."""
        deadline = time.monotonic() + self.retry.deadline_s
        backoff = self.retry.backoff_first_s
        turn = [0]
        last = None
        for _ in range(self.retry.attempts):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            target = self._pick(turn)
            try:
                answer, call = attempt(self._stub(target), min(self.retry.attempt_timeout_s, remaining))
                self._answered(target, call.initial_metadata())
                return answer, target
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE or REFUSED in dict(e.trailing_metadata() or ()):
                    raise PaymeshError(e.code(), e.details()) from None
                if self._failed(target, e, turn) is not None:
                    continue
                last = e
                time.sleep(random.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, self.retry.backoff_max_s)
        code = last.code() if last is not None else grpc.StatusCode.DEADLINE_EXCEEDED
        details = last.details() if last is not None else "no attempt left"
        raise PaymeshError(code, f"no node of {self.nodes} answered within the retry policy; last: {details}")

    def call(self, method: str, request):
        """A unary call of ``PartnerService.<method>`` under the retry rules."""
        return self._retry(lambda stub, timeout: getattr(stub, method).with_call(request, timeout=timeout))[0]


@dataclasses.dataclass(frozen=True)
class Payer:
    """The payer's details, which stay in the partner's home region."""

    name: str
    account: str
    reference: str

    def wire(self):
        return pb.PayerDetails(name=self.name, account=self.account, reference=self.reference)


@dataclasses.dataclass(frozen=True)
class PaymentItem:
    """One payment of a batch: ``amount`` (a decimal string) in ``currency``
    fixed on the payer's side, to the payee of ``qr``."""

    qr: str
    amount: str
    currency: str
    payer: Payer
    idempotency_key: str = dataclasses.field(default_factory=lambda: str(uuid.uuid4()))
    max_total_debit: Optional[str] = None

    def wire(self):
        bound = common_pb2.Money(amount=self.max_total_debit, currency=self.currency) if self.max_total_debit else None
        return pb.BatchedPayment(
            idempotency_key=self.idempotency_key,
            qr_payload=self.qr,
            source_amount=common_pb2.Money(amount=self.amount, currency=self.currency),
            max_total_debit=bound,
            payer=self.payer.wire(),
        )


class PartnerClient:
    """The partner API of ``region``."""

    def __init__(self, region: Region):
        self.region = region

    def create_payment(self, qr: str, amount: str, currency: str, payer: Payer,
                       idempotency_key: Optional[str] = None, max_total_debit: Optional[str] = None):
        """Price and pay in one call; a ``CreatePaymentResponse`` (check its
        ``reject_code``). Without a key one is made up, and kept for every
        retry of this call."""
        item = PaymentItem(qr, amount, currency, payer, idempotency_key or str(uuid.uuid4()), max_total_debit)
        batched = item.wire()
        request = pb.CreatePaymentRequest(
            idempotency_key=batched.idempotency_key,
            qr_payload=batched.qr_payload,
            source_amount=batched.source_amount,
            payer=batched.payer,
        )
        if batched.HasField("max_total_debit"):
            request.max_total_debit.CopyFrom(batched.max_total_debit)
        return self.region.call("CreatePayment", request)

    def create_quote(self, qr: str, amount: str, currency: str, idempotency_key: str = ""):
        """A quote for paying ``amount`` to the payee of ``qr``."""
        request = pb.CreateQuoteRequest(
            qr_payload=qr,
            source_amount=common_pb2.Money(amount=amount, currency=currency),
            idempotency_key=idempotency_key,
        )
        return self.region.call("CreateQuote", request)

    def create_transfer(self, quote_id: str, qr: str, payer: Payer, idempotency_key: Optional[str] = None):
        """A transfer from a quote."""
        request = pb.CreateTransferRequest(
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            quote_id=quote_id,
            qr_payload=qr,
            payer=payer.wire(),
        )
        return self.region.call("CreateTransfer", request)

    def create_payments(self, items: Sequence[PaymentItem]) -> List["pb.TransferItemResult"]:
        """Many one-call payments, up to 500 per request (more are sent as
        several requests): each answered at its position with what its own
        call would have answered (``transfer`` and ``reject_code``, or
        ``status_code`` and ``status_message``)."""
        results = []
        for start in range(0, len(items), ITEMS_PER_REQUEST_MAX):
            chunk = items[start:start + ITEMS_PER_REQUEST_MAX]
            request = pb.CreateTransfersRequest(items=[pb.TransferItem(payment=item.wire()) for item in chunk])
            results.extend(self.region.call("CreateTransfers", request).results)
        return results

    @staticmethod
    def _opened(stream):
        """A stream once its node has answered (its headers, or an error
        raised here for the retry rules), with its call."""
        stream.initial_metadata()
        if stream.done() and stream.code() != grpc.StatusCode.OK:
            raise stream
        return stream, stream

    def get_transfer(self, transfer_id: str):
        """A transfer the partner made or received."""
        return self.region.call("GetTransfer", pb.GetTransferRequest(transfer_id=transfer_id)).transfer

    def get_position(self):
        """The partner's positions."""
        return self.region.call("GetPosition", pb.GetPositionRequest()).positions

    def events(self, from_cursor: int = 0, timeout_s: Optional[float] = None) -> Iterator["pb.Event"]:
        """The partner's events after ``from_cursor``, in order with no gap,
        for as long as the caller reads (or until ``timeout_s`` passes). A
        stream that ends (leadership moved, the reader fell behind) is
        opened again from the last cursor seen, on whichever node leads."""
        cursor = from_cursor
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while deadline is None or time.monotonic() < deadline:
            remaining = None if deadline is None else max(0.01, deadline - time.monotonic())
            node = None
            request = pb.StreamEventsRequest(from_cursor=cursor)
            try:
                opened = lambda stub, _: self._opened(stub.StreamEvents(request, timeout=remaining))  # noqa: E731
                stream, node = self.region._retry(opened)
                for response in stream:
                    event = response.event
                    if event.cursor != cursor + 1:
                        raise PaymeshError(grpc.StatusCode.DATA_LOSS,
                                           f"event {event.cursor} after {cursor}: a gap in the stream")
                    cursor = event.cursor
                    yield event
            except grpc.RpcError as e:
                if e.code() not in _RETRYABLE:
                    raise PaymeshError(e.code(), e.details()) from None
                if deadline is not None and time.monotonic() >= deadline:
                    return
                # The stream ended on the node that served it: the next
                # opening goes wherever its answer points.
                if node is None or self.region._failed(node, e, [0]) is None:
                    time.sleep(self.region.retry.backoff_first_s)

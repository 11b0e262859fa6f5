"""The Python SDK against a real region of `paymesh` processes, which the
Rust test crates/paymesh-cli/tests/suite/python_sdk.rs starts and describes in
environment variables (a variable missing is an error, not a skip):

* PAYMESH_NODES: the nodes' API addresses, comma-separated, followers first;
  PAYMESH_LEADER: the leader's;
* PAYMESH_CA, PAYMESH_CERT, PAYMESH_KEY: the region's CA and a payer
  partner's certificate and key;
* PAYMESH_QR, PAYMESH_CURRENCY: a payee's QR code and the corridor's
  currency;
* PAYMESH_WEBHOOK_SECRET, PAYMESH_WEBHOOK_DELIVERY: a webhook's secret and a
  file holding a real delivery the region made with it (JSON: signature,
  body, arrived_unix_ms).
"""

import itertools
import json
import os
import socket
import threading
import time
import unittest
import uuid

import grpc

import paymesh_sdk
from paymesh_sdk import Payer, PaymentItem, PaymeshError
from paymesh_sdk.client import LEADER_ADDR, LEADER_ID, NODE_ID
from paymesh_sdk.webhook import WebhookError, sign, verify

from paymesh.common.v1 import common_pb2
from paymesh.partner.v1 import partner_pb2 as pb


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through crates/paymesh-cli/tests/suite/python_sdk.rs")
    return value


PAYER = Payer(name="Ada Traveller", account="acct-77", reference="py-sdk")


def region(nodes=None):
    nodes = nodes or env("PAYMESH_NODES").split(",")
    return paymesh_sdk.Region(nodes, env("PAYMESH_CA"), env("PAYMESH_CERT"), env("PAYMESH_KEY"))


def key(label):
    return f"py-{label}-{uuid.uuid4().hex[:12]}"


class Payments(unittest.TestCase):
    def setUp(self):
        self.region = region()
        self.client = paymesh_sdk.PartnerClient(self.region)
        self.qr, self.currency = env("PAYMESH_QR"), env("PAYMESH_CURRENCY")

    def tearDown(self):
        self.region.close()

    def test_a_payment_is_made_once_under_its_key_and_another_body_under_it_is_refused(self):
        k = key("once")
        first = self.client.create_payment(self.qr, "2.50", self.currency, PAYER, idempotency_key=k)
        self.assertEqual(first.reject_code, common_pb2.REJECT_CODE_UNSPECIFIED)
        self.assertEqual(first.transfer.state, pb.TRANSFER_STATE_COMMITTED)
        again = self.client.create_payment(self.qr, "2.50", self.currency, PAYER, idempotency_key=k)
        self.assertEqual(again.transfer.transfer_id, first.transfer.transfer_id)
        with self.assertRaises(PaymeshError) as refused:
            self.client.create_payment(self.qr, "3.00", self.currency, PAYER, idempotency_key=k)
        self.assertEqual(refused.exception.code, grpc.StatusCode.ALREADY_EXISTS)

    def test_a_bound_below_the_price_is_refused_and_pays_nothing(self):
        before = self.client.get_position()[0].posted_balance.amount
        refused = self.client.create_payment(self.qr, "2.00", self.currency, PAYER, max_total_debit="2.00")
        self.assertEqual(refused.reject_code, common_pb2.REJECT_CODE_PRICE_ABOVE_LIMIT)
        self.assertEqual(self.client.get_position()[0].posted_balance.amount, before)

    def test_the_client_follows_the_leader_from_a_follower(self):
        nodes = env("PAYMESH_NODES").split(",")
        leader = env("PAYMESH_LEADER")
        self.assertNotEqual(nodes[0], leader, "the first node given must be a follower")
        paid = self.client.create_payment(self.qr, "1.00", self.currency, PAYER)
        self.assertEqual(paid.transfer.state, pb.TRANSFER_STATE_COMMITTED)
        self.assertEqual(self.region._preferred, leader)
        # The follower's redirect named its node: an answer, not silence.
        self.assertFalse(self.region.suspected(nodes[0]))

    def test_a_node_that_never_answers_is_passed_over_at_the_connect_timeout(self):
        silent = socket.socket()
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        held = []

        def hold():
            try:
                while True:
                    held.append(silent.accept()[0])
            except OSError:
                return  # closed at the end of the test

        threading.Thread(target=hold, daemon=True).start()
        dead = "127.0.0.1:%d" % silent.getsockname()[1]
        nodes = [dead] + env("PAYMESH_NODES").split(",")
        region = paymesh_sdk.Region(nodes, env("PAYMESH_CA"), env("PAYMESH_CERT"), env("PAYMESH_KEY"))
        client = paymesh_sdk.PartnerClient(region)
        try:
            started = time.monotonic()
            paid = client.create_payment(self.qr, "1.00", self.currency, PAYER)
            took = time.monotonic() - started
            self.assertEqual(paid.transfer.state, pb.TRANSFER_STATE_COMMITTED)
            policy = region.retry
            self.assertLess(took, policy.connect_timeout_s + 2, f"the attempt timeout is {policy.attempt_timeout_s} s")
            self.assertTrue(region.suspected(dead))
            self.assertTrue(held, "the silent node was dialled")
            # A new call's turn passes it over.
            region._preferred = None
            started = time.monotonic()
            client.get_position()
            self.assertLess(time.monotonic() - started, 1.0)
        finally:
            region.close()
            silent.close()

    def test_a_batch_answers_each_item_as_its_own_call_would(self):
        good = PaymentItem(self.qr, "1.00", self.currency, PAYER, key("batch-a"))
        items = [
            good,
            PaymentItem(self.qr, "1.25", self.currency, PAYER, key("batch-b")),
            good,  # the same key and body: the same payment
            PaymentItem(self.qr, "600", self.currency, PAYER, key("batch-big")),  # above the corridor's maximum
            PaymentItem(self.qr, "9.99", self.currency, PAYER, good.idempotency_key),  # the key, another body
        ]
        results = self.client.create_payments(items)
        self.assertEqual(len(results), 5)
        self.assertEqual(results[0].transfer.state, pb.TRANSFER_STATE_COMMITTED)
        self.assertEqual(results[1].transfer.state, pb.TRANSFER_STATE_COMMITTED)
        self.assertNotEqual(results[0].transfer.transfer_id, results[1].transfer.transfer_id)
        self.assertEqual(results[2].transfer.transfer_id, results[0].transfer.transfer_id)
        self.assertEqual(results[3].reject_code, common_pb2.REJECT_CODE_AMOUNT_ABOVE_MAXIMUM)
        self.assertEqual(results[4].status_code, grpc.StatusCode.ALREADY_EXISTS.value[0])

    def test_an_event_stream_resumes_from_its_last_cursor_with_no_gap(self):
        start = self.newest_cursor()
        for i in range(3):
            self.client.create_payment(self.qr, "1.00", self.currency, PAYER, idempotency_key=key(f"ev-{i}"))
        first = list(itertools.islice(self.client.events(from_cursor=start, timeout_s=20), 2))
        self.assertEqual([e.cursor for e in first], [start + 1, start + 2])
        resumed = list(itertools.islice(self.client.events(from_cursor=first[-1].cursor, timeout_s=20), 1))
        self.assertEqual(resumed[0].cursor, start + 3)
        self.assertTrue(all(e.kind == pb.EVENT_KIND_COMMITTED for e in first + resumed))

    def test_a_connection_gone_silent_fails_its_call_at_the_keepalive_not_the_attempt_timeout(self):
        proxy = FreezableProxy(env("PAYMESH_LEADER"))
        policy = paymesh_sdk.RetryPolicy(attempts=1)
        region = paymesh_sdk.Region([proxy.addr], env("PAYMESH_CA"), env("PAYMESH_CERT"), env("PAYMESH_KEY"), policy)
        client = paymesh_sdk.PartnerClient(region)
        try:
            client.get_position()
            proxy.frozen.set()
            started = time.monotonic()
            with self.assertRaises(PaymeshError):
                client.get_position()
            took = time.monotonic() - started
            self.assertLess(took, policy.keepalive_interval_s + policy.keepalive_timeout_s + 1.5,
                            f"the attempt timeout is {policy.attempt_timeout_s} s")
            self.assertTrue(region.suspected(proxy.addr))
        finally:
            region.close()
            proxy.close()

    def newest_cursor(self):
        """The cursor of the partner's newest event (streams to the end)."""
        newest = 0
        for event in self.client.events(from_cursor=0, timeout_s=3):
            newest = event.cursor
        return newest


class FreezableProxy:
    """A TCP proxy on loopback to ``target`` that can freeze: from then on
    it carries nothing either way and closes nothing (a node that froze,
    or whose host was lost, with its connections left open)."""

    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.frozen = threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.addr = "127.0.0.1:%d" % self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        try:
            while True:
                client = self.listener.accept()[0]
                server = socket.create_connection(self.target)
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        except OSError:
            return  # closed at the end of the test

    def _pump(self, source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    return
                while self.frozen.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
        except OSError:
            return

    def close(self):
        self.listener.close()


class FakeAnswer(grpc.RpcError):
    """A retryable error with the metadata a node's answer would carry."""

    def __init__(self, trailers):
        self.trailers = trailers

    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def initial_metadata(self):
        return ()

    def trailing_metadata(self):
        return self.trailers


class Routing(unittest.TestCase):
    """Where a redirect goes (no network: the routing rules alone)."""

    def test_a_redirect_finds_the_leader_by_its_id_at_the_clients_own_address(self):
        nodes = ["localhost:7111", "localhost:7112", "localhost:7113"]
        region = paymesh_sdk.Region(nodes, env("PAYMESH_CA"), env("PAYMESH_CERT"), env("PAYMESH_KEY"))
        redirect = FakeAnswer([(NODE_ID, "2"), (LEADER_ID, "1"), (LEADER_ADDR, "10.77.1.11:8000")])
        turn = [0]
        self.assertEqual(region._failed(nodes[1], redirect, turn), "10.77.1.11:8000", "nothing known of node 1 yet")
        region._answered(nodes[0], [(NODE_ID, "1")])
        self.assertEqual(region._failed(nodes[1], redirect, turn), nodes[0])
        self.assertFalse(region.suspected(nodes[1]), "the follower answered")
        # A leader that did not answer just now is not followed, by either name.
        region._failed(nodes[0], FakeAnswer([]), turn)
        self.assertTrue(region.suspected(nodes[0]))
        self.assertIsNone(region._failed(nodes[1], redirect, turn))
        self.assertIsNone(region._preferred)
        self.assertEqual(region._pick(turn), nodes[2], "the call goes on with the node after the follower")


class Webhooks(unittest.TestCase):
    def setUp(self):
        with open(env("PAYMESH_WEBHOOK_DELIVERY")) as f:
            self.delivery = json.load(f)
        self.secret = env("PAYMESH_WEBHOOK_SECRET")
        self.body = self.delivery["body"].encode()
        self.signature = self.delivery["signature"]
        self.arrived = self.delivery["arrived_unix_ms"]

    def test_a_real_delivery_verifies_and_parses(self):
        delivery = verify([self.secret], self.signature, self.body, now_ms=self.arrived)
        self.assertTrue(delivery["events"])
        for event in delivery["events"]:
            self.assertEqual(event["id"], f"{delivery['region']}/{delivery['partner']}/{event['cursor']}")

    def test_python_signs_as_the_region_does(self):
        timestamp = int(self.signature.split(",")[0][2:])
        self.assertEqual(sign([self.secret], timestamp, self.body), self.signature)

    def test_a_tampered_body_another_secret_or_an_old_delivery_is_refused(self):
        with self.assertRaises(WebhookError):
            verify([self.secret], self.signature, self.body.replace(b'"cursor":', b'"cursor": '), now_ms=self.arrived)
        with self.assertRaises(WebhookError):
            verify(["x" * 32], self.signature, self.body, now_ms=self.arrived)
        with self.assertRaises(WebhookError):
            verify([self.secret], self.signature, self.body, now_ms=self.arrived + 10 * 60 * 1000)
        for bad in ["", "t=1", "v1=00", "t=x,v1=00", "garbage"]:
            with self.assertRaises(WebhookError):
                verify([self.secret], bad, self.body, now_ms=self.arrived)


if __name__ == "__main__":
    unittest.main()

"""The Python SDK against a real region of `paymesh` processes, which the
Rust test crates/paymesh-cli/tests/python_sdk.rs starts and describes in
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
import unittest
import uuid

import grpc

import paymesh_sdk
from paymesh_sdk import Payer, PaymentItem, PaymeshError
from paymesh_sdk.webhook import WebhookError, sign, verify

from paymesh.common.v1 import common_pb2
from paymesh.partner.v1 import partner_pb2 as pb


def env(name):
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"{name} is not set: run these tests through crates/paymesh-cli/tests/python_sdk.rs")
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
        self.assertEqual(self.region._target, leader)

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

    def newest_cursor(self):
        """The cursor of the partner's newest event (streams to the end)."""
        newest = 0
        for event in self.client.events(from_cursor=0, timeout_s=3):
            newest = event.cursor
        return newest


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

#!/usr/bin/env python3
"""A partner's side of the mesh, for deploy/smoke.sh and for trying things by
hand: calls paymesh.partner.v1.PartnerService over mutual TLS with a
partner's development certificate, through a region's published API ports.

    partner.py pay      --region us-west --partner paypal-us --qr wxp://m0001 \
                        --amount 12.34 --currency USD [--idempotency-key KEY] [--timeout 60]
    partner.py position --region cn-east --partner wechat-cn --currency CNY

For a region of your own (README.md, "A region on your machine"), name its
nodes' API addresses and the partner's files instead of a container region:

    partner.py pay --node 127.0.0.1:8101 --node 127.0.0.1:8102 \
                   --ca tls/ca.pem --cert tls/partner-paypal-us.pem \
                   --key tls/partner-paypal-us.key --qr pay://merchant/till-1 \
                   --amount 25.00 --currency USD

`pay` is one cross-border (or domestic) payment, end to end: LookupPayee,
CreateQuote, CreateTransfer, then GetTransfer until the transfer is final
(COMMITTED or ABORTED) or --timeout passes. It prints one JSON object and
exits 0 only for COMMITTED. `position` prints the partner's position as JSON.

Only followers' UNAVAILABLE answers are retried: the call goes to the next
of the region's nodes (the leader hint names an address inside the
containers' networks, so it is not followed), within the timeout.

Needs grpcio and grpcio-tools (deploy/smoke.sh installs them in a virtual
environment under deploy/run/venv); the Python modules are generated from
the repository's proto/ into that environment on first use.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import uuid

DEPLOY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(DEPLOY)
RUN = os.path.join(DEPLOY, "run")
REGIONS = ["us-west", "ap-southeast", "cn-east"]
PROTOS = ["paymesh/common/v1/common.proto", "paymesh/partner/v1/partner.proto"]


def generated_modules():
    """Generate and import the partner API's Python modules: generated into
    the Python environment running this (whose grpcio-tools and protobuf
    agree), once, and again whenever a .proto file is newer."""
    out = os.path.join(sys.prefix, "paymesh-pyproto")
    marker = os.path.join(out, "paymesh", "partner", "v1", "partner_pb2_grpc.py")
    proto_dir = os.path.join(REPO, "proto")
    newest = max(os.path.getmtime(os.path.join(proto_dir, p)) for p in PROTOS)
    if not os.path.exists(marker) or os.path.getmtime(marker) < newest:
        os.makedirs(out, exist_ok=True)
        command = [sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir,
                   f"--python_out={out}", f"--grpc_python_out={out}"]
        command += [os.path.join(proto_dir, p) for p in PROTOS]
        subprocess.run(command, check=True)
    sys.path.insert(0, out)
    from paymesh.common.v1 import common_pb2  # noqa: E402
    from paymesh.partner.v1 import partner_pb2, partner_pb2_grpc  # noqa: E402
    return common_pb2, partner_pb2, partner_pb2_grpc


def addresses(region):
    r = REGIONS.index(region) + 1
    return [f"127.0.0.1:71{r}{n}" for n in (1, 2, 3)]


class Partner:
    """A partner's connections to one region's nodes: the containers' region
    `args.region` with its generated certificates, or the nodes `args.node`
    with the files `args.ca`, `args.cert` and `args.key`."""

    def __init__(self, args):
        import grpc
        self.grpc = grpc
        _, self.pb, self.pb_grpc = generated_modules()
        read = lambda path: open(path, "rb").read()  # noqa: E731
        if args.node:
            self.addresses = args.node
            ca, cert, key = args.ca, args.cert, args.key
        else:
            certs = os.path.join(RUN, "certs", args.region)
            self.addresses = addresses(args.region)
            ca = os.path.join(certs, "ca.pem")
            cert = os.path.join(certs, f"partner-{args.partner}.pem")
            key = os.path.join(certs, f"partner-{args.partner}.key")
        creds = grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
        self.stubs = [self.pb_grpc.PartnerServiceStub(grpc.secure_channel(a, creds)) for a in self.addresses]
        self.next = 0

    def call(self, method, request, deadline):
        """Call `method` on whichever node answers other than UNAVAILABLE."""
        last = None
        while time.monotonic() < deadline:
            i = self.next % len(self.stubs)
            try:
                timeout = max(0.5, min(10.0, deadline - time.monotonic()))
                return getattr(self.stubs[i], method)(request, timeout=timeout)
            except self.grpc.RpcError as e:
                last = e
                if e.code() not in (self.grpc.StatusCode.UNAVAILABLE,
                                    self.grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                self.next += 1
                time.sleep(0.1)
        raise TimeoutError(f"{method}: no node of {self.addresses} answered in time (last: {last})")


def money_dict(m):
    return {"amount": m.amount, "currency": m.currency} if m is not None else None


def pay(args):
    common, pb, _ = generated_modules()
    client = Partner(args)
    deadline = time.monotonic() + args.timeout
    started = time.monotonic()
    reject = lambda code: common.RejectCode.Name(code)  # noqa: E731
    result = {"region": args.region or ",".join(args.node), "payer": args.partner or args.cert, "qr": args.qr}

    looked = client.call("LookupPayee", pb.LookupPayeeRequest(qr_payload=args.qr), deadline)
    if looked.reject_code:
        result.update(outcome="payee not found", reject=reject(looked.reject_code))
        return result, False
    result["payee"] = {"partner": looked.payee.partner_id, "region": looked.payee.region,
                       "currency": looked.payee.currency}

    quoted = client.call("CreateQuote", pb.CreateQuoteRequest(
        qr_payload=args.qr, source_amount=common.Money(amount=args.amount, currency=args.currency)), deadline)
    if quoted.reject_code or not quoted.HasField("quote"):
        result.update(outcome="quote refused", reject=reject(quoted.reject_code))
        return result, False
    q = quoted.quote
    result["quote"] = {"id": q.quote_id, "rate": q.rate, "source": money_dict(q.source_amount),
                       "destination": money_dict(q.destination_amount), "fee": money_dict(q.fee),
                       "total_debit": money_dict(q.total_debit)}

    key = args.idempotency_key or f"smoke-{uuid.uuid4().hex[:16]}"
    request = pb.CreateTransferRequest(
        idempotency_key=key, quote_id=q.quote_id, qr_payload=args.qr,
        payer=pb.PayerDetails(name="Smoke Tester", account="acct-smoke", reference=f"ref-{key}"))
    created = client.call("CreateTransfer", request, deadline)
    if not created.HasField("transfer"):
        result.update(outcome="transfer refused", reject=reject(created.reject_code))
        return result, False
    t = created.transfer
    result["transfer_id"] = t.transfer_id
    result["idempotency_key"] = key
    final = (pb.TRANSFER_STATE_COMMITTED, pb.TRANSFER_STATE_ABORTED)
    states = [pb.TransferState.Name(t.state)]
    while t.state not in final and time.monotonic() < deadline:
        time.sleep(0.1)
        got = client.call("GetTransfer", pb.GetTransferRequest(transfer_id=t.transfer_id), deadline)
        if got.HasField("transfer"):
            t = got.transfer
            name = pb.TransferState.Name(t.state)
            if states[-1] != name:
                states.append(name)
    result.update(
        state=pb.TransferState.Name(t.state), states_seen=states,
        abort_reason=reject(t.abort_reason) if t.abort_reason else None,
        source_amount=money_dict(t.source_amount), fee=money_dict(t.fee),
        destination_amount=money_dict(t.destination_amount), rate=t.rate,
        seconds=round(time.monotonic() - started, 3))
    return result, t.state == pb.TRANSFER_STATE_COMMITTED


def position(args):
    _, pb, _ = generated_modules()
    client = Partner(args)
    got = client.call("GetPosition", pb.GetPositionRequest(currency=args.currency),
                      time.monotonic() + args.timeout)
    rows = [{"currency": p.currency, "posted": p.posted_balance.amount,
             "pending_debits": p.pending_debits.amount, "pending_credits": p.pending_credits.amount,
             "available": p.available.amount} for p in got.positions]
    return {"region": args.region or ",".join(args.node), "partner": args.partner or args.cert,
            "positions": rows}, True


def where(parser):
    """The options that say which region and partner: a containers' region
    by name, or nodes and certificate files of your own."""
    parser.add_argument("--region", choices=REGIONS, help="a region of deploy/ (its generated certificates)")
    parser.add_argument("--partner", help="the partner, with --region")
    parser.add_argument("--node", action="append", default=[], help="a node's API address (repeatable)")
    parser.add_argument("--ca", help="the region's CA certificate, with --node")
    parser.add_argument("--cert", help="the partner's certificate, with --node")
    parser.add_argument("--key", help="the partner's private key, with --node")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pay", help="one payment, end to end")
    where(p)
    p.add_argument("--qr", required=True)
    p.add_argument("--amount", required=True)
    p.add_argument("--currency", required=True)
    p.add_argument("--idempotency-key", help="the transfer's idempotency key (default: a new one)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(run=pay)
    q = sub.add_parser("position", help="a partner's position")
    where(q)
    q.add_argument("--currency", default="")
    q.add_argument("--timeout", type=float, default=30.0)
    q.set_defaults(run=position)
    args = parser.parse_args()
    if args.node:
        missing = [f"--{name}" for name in ("ca", "cert", "key") if not getattr(args, name)]
        if missing:
            parser.error(f"--node needs {', '.join(missing)} too")
    elif not (args.region and args.partner):
        parser.error("give --region and --partner (the containers' regions), or --node with --ca, --cert, --key")
    try:
        result, ok = args.run(args)
    except Exception as e:  # a refusal or a timeout: say which, as JSON
        result, ok = {"error": f"{type(e).__name__}: {e}"}, False
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

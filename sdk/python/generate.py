#!/usr/bin/env python3
"""Generate the Python modules of the partner API (paymesh.common.v1 and
paymesh.partner.v1, protobuf messages and gRPC stubs) from the repository's
proto/ into a directory: the package build calls it, and so can a partner
that vendors the modules (`python generate.py OUT_DIR`).

Needs grpcio-tools."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto"))
PROTOS = ["paymesh/common/v1/common.proto", "paymesh/partner/v1/partner.proto"]


def generate(out):
    """Write paymesh/{common,partner}/v1/*_pb2*.py under `out`, with an
    __init__.py in every package directory."""
    from grpc_tools import protoc

    if not os.path.isdir(PROTO_DIR):
        raise SystemExit(f"generate.py: no proto/ at {PROTO_DIR}; build from the paymesh repository")
    os.makedirs(out, exist_ok=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    args = ["grpc_tools.protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}"]
    args += [os.path.join(PROTO_DIR, p) for p in PROTOS]
    if protoc.main(args) != 0:
        raise SystemExit("generate.py: protoc failed")
    for package in ["paymesh", "paymesh/common", "paymesh/common/v1", "paymesh/partner", "paymesh/partner/v1"]:
        init = os.path.join(out, package, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: generate.py OUT_DIR")
    generate(sys.argv[1])

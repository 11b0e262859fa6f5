#!/usr/bin/env python3
"""Shares of a node's CPU samples by kind of work, from `perf script` text.

    profile_shares.py LEADER.perf.txt FOLLOWER.perf.txt [--top N]

Each sample (a thread's call stack, leaf first) counts once, for the first
kind below whose pattern a frame of it matches, in the order listed (so an
admission's history lookup counts as a history read, not as the engine's
work); then the paymesh functions on the most samples (inclusive). Used by
scripts/peak-profile.sh.
"""

import collections
import re
import sys

# (kind, pattern of a frame); first match wins. The engine's background
# thread is told by its name instead (fjall names its threads `fjall:…`).
KINDS = [
    ("history: writing a batch", r"paymesh_store::history::History::write\b"),
    ("history: reads (key lookups, readers)", r"paymesh_store::history::"),
    ("applying commands (hot state)", r"paymesh_core::state::State::apply\b"),
    ("state machine: other (log, outcomes)", r"paymesh_store::(state_machine|log_store|segment_log)"),
    ("Raft (openraft)", r"openraft::"),
    ("partner API", r"paymesh_node::partner_service"),
    ("engine and actors", r"paymesh_node::(actors|engine)"),
    ("gRPC, HTTP/2, TLS", r"\bh2::|rustls|\bhyper::|\btonic::|\btower::"),
    ("runtime (tokio)", r"\btokio::"),
]
BACKGROUND = "history's engine: flushes, compactions"


def frame_name(line):
    """A frame's function, without its address, offset or object file."""
    text = re.sub(r" \([^)]*\)$", "", line.strip())
    text = re.sub(r"^[0-9a-f]+ ", "", text)
    return re.sub(r"\+0x[0-9a-f]+$", "", text)


def samples(path):
    """(thread name, [frame, ...]) for each sample of a `perf script` file."""
    thread, stack = None, None
    with open(path, errors="replace") as lines:
        for line in lines:
            if not line.strip():
                if stack is not None:
                    yield thread, stack
                thread, stack = None, None
            elif stack is None and not line[0].isspace():
                thread, stack = line.split()[0], []
            elif stack is not None:
                stack.append(frame_name(line))
    if stack is not None:
        yield thread, stack


def kind_of(thread, stack):
    if thread.startswith("fjall"):
        return BACKGROUND
    for kind, pattern in KINDS:
        if any(re.search(pattern, frame) for frame in stack):
            return kind
    return "other"


def report(role, path, top):
    kinds = collections.Counter()
    functions = collections.Counter()
    total = 0
    for thread, stack in samples(path):
        total += 1
        kinds[kind_of(thread, stack)] += 1
        for frame in {f for f in stack if f.startswith("paymesh_") or f.startswith("<paymesh_")}:
            functions[frame] += 1
    if total == 0:
        sys.exit(f"profile_shares.py: no samples in {path}")
    print(f"\n{role}: {total} samples")
    for kind, n in kinds.most_common():
        print(f"  {100 * n / total:5.1f} %  {kind}")
    print("  paymesh functions on the most samples (inclusive):")
    for function, n in functions.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {function[:120]}")


def main(argv):
    top = 15
    if "--top" in argv:
        at = argv.index("--top")
        top = int(argv[at + 1])
        del argv[at : at + 2]
    if len(argv) != 2:
        sys.exit(__doc__)
    report("leader", argv[0], top)
    report("follower", argv[1], top)


if __name__ == "__main__":
    main(sys.argv[1:])

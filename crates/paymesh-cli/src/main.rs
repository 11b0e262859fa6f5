//! The `paymesh` command. Everything it does lives in the `paymesh_cli`
//! library; this file only hands it the arguments.

/// mimalloc instead of the system allocator: the node allocates many small,
/// short-lived buffers per request (HTTP/2 frames, protobuf messages, map
/// nodes), where glibc's malloc showed up as a sixth of the leader's CPU time
/// (see docs/BENCHMARKS.md, "Transfers through the partner API").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    paymesh_cli::run(std::env::args_os())
}

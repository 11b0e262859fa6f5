//! What `paymesh` prints when there is nobody to talk to, or nobody to
//! listen: a closed pipe ends a command quietly, and a region with no node
//! up is reported as just that.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// An address on loopback where nothing listens.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

fn status(address: &str, json: bool) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_paymesh"));
    command.args(["status", "--plaintext", "--node", address]);
    if json {
        command.arg("--json");
    }
    command
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    // The reader is gone before the command writes: what `paymesh status
    // --json | head -0` does.
    let mut child = status(&dead_address(), true).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert!(!output.status.success(), "nothing was written, so it did not succeed");
}

#[test]
fn with_no_node_up_status_says_only_that() {
    let output = status(&dead_address(), false).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no node answered"), "{stderr}");
    assert!(!stdout.contains("replicas differ") && !stdout.contains("replicas agree"), "{stdout}");
    assert!(stdout.contains("down"), "the table shows the node down: {stdout}");
}

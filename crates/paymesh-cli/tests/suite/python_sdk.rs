//! The Python SDK (`sdk/python`) against a real region: installed with pip
//! from the repository into a virtual environment of its own (its protobuf
//! modules generated from `proto/` by the package's own script), then its
//! tests (`sdk/python/tests`) run against a 3-node region of `paymesh`
//! processes over mutual TLS: payments once under their key, a refused
//! bound, the leader followed from a follower, a batch, an event stream
//! resumed from its cursor, and a real webhook delivery verified.
//!
//! Needs `python3` with `venv` and PyPI (grpcio, grpcio-tools, protobuf):
//! their absence fails the test.

#![allow(clippy::unwrap_used)]

use crate::common::{self, repo};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::money;
use paymesh_harness::webhook_receiver::Behaviour;
use paymesh_proto::partner::v1 as wire;

const SECRET: &str = "python-sdk-test-secret-0123456789";

/// Run `command`, panicking with its output unless it succeeds.
fn run(command: &mut Command, what: &str) -> String {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{what} failed ({}):\n{text}", output.status);
    text
}

/// A virtual environment with the SDK installed from the repository.
fn python_with_the_sdk() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-sdk-venv");
    let python = venv.join("bin/python");
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv), "python3 -m venv");
    }
    let started = Instant::now();
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--force-reinstall"])
            .arg(repo().join("sdk/python")),
        "pip install sdk/python",
    );
    println!("pip install sdk/python: {:?}", started.elapsed());
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_pays_batches_streams_and_verifies_webhooks_against_a_real_region() {
    let python = python_with_the_sdk();
    let (region, ca) = common::region_with_webhooks("").await;

    // A real delivery for the Python side to verify.
    let receiver = ca.receiver(Behaviour::Accept).await.unwrap();
    region.set_webhook("merchant-net", &receiver.url(), SECRET).await;
    let payment = wire::CreatePaymentRequest {
        idempotency_key: "for-the-webhook".into(),
        qr_payload: "pay://merchant/m-1".into(),
        amount: Some(wire::create_payment_request::Amount::SourceAmount(money("3", "USD"))),
        max_total_debit: None,
        payer: Some(wire::PayerDetails { name: "Ada".into(), account: "acct-1".into(), reference: "r".into() }),
    };
    region.partner("wallet-a").create_payment(payment).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let delivery = loop {
        if let Some(delivery) = receiver.accepted().into_iter().next() {
            break delivery;
        }
        assert!(Instant::now() < deadline, "no webhook delivery within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivery_file = region.path().join("webhook-delivery.json");
    let captured = serde_json::json!({
        "signature": delivery.signature,
        "body": String::from_utf8(delivery.body.clone()).unwrap(),
        "arrived_unix_ms": delivery.at_unix_ms,
    });
    std::fs::write(&delivery_file, captured.to_string()).unwrap();

    // Followers first: the SDK must find the leader by itself.
    let leader = region.wait_leader(Duration::from_secs(10)).await;
    let mut nodes: Vec<(u64, String)> = region.nodes.values().map(|n| (n.id, n.api_addr.clone())).collect();
    nodes.sort_by_key(|(id, _)| *id == leader);
    let leader_addr = nodes.last().unwrap().1.clone();
    let [ca_file, cert, key] = region.cert_files("partner-wallet-a");
    let out = run(
        Command::new(&python)
            .args(["-m", "unittest", "discover", "-v", "-s"])
            .arg(repo().join("sdk/python/tests"))
            .env("PAYMESH_NODES", nodes.iter().map(|(_, a)| a.as_str()).collect::<Vec<_>>().join(","))
            .env("PAYMESH_LEADER", &leader_addr)
            .env("PAYMESH_CA", ca_file)
            .env("PAYMESH_CERT", cert)
            .env("PAYMESH_KEY", key)
            .env("PAYMESH_QR", "pay://merchant/m-1")
            .env("PAYMESH_CURRENCY", "USD")
            .env("PAYMESH_WEBHOOK_SECRET", SECRET)
            .env("PAYMESH_WEBHOOK_DELIVERY", &delivery_file),
        "the Python SDK's tests",
    );
    println!("{out}");
    assert!(out.contains("Ran 11 tests") && out.trim_end().ends_with("OK"), "{out}");
}

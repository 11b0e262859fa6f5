//! The operator's commands against a 3-node region of real processes over
//! mutual TLS: configure partners, a corridor, a route and a top-up with
//! `paymesh`, then pay through the partner API and read the books.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::Region;
use paymesh_proto::common::v1 as wire_common;
use paymesh_proto::partner::v1 as wire;

const OPERATOR: &str = "operator-tests";

/// Run `paymesh` as the operator and require success; its stdout.
fn ok(region: &Region, args: &[&str]) -> String {
    let (code, stdout, stderr) = region.cli(OPERATOR, args);
    assert_eq!(code, 0, "paymesh {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Run `paymesh` as `stem` and require failure with exit code 1; its stderr.
fn refused(region: &Region, stem: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = region.cli(stem, args);
    assert_eq!(code, 1, "paymesh {args:?} should fail:\n{stdout}\n{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_configures_a_region_with_the_paymesh_command() {
    let region = Region::start(3, "");
    region.initialize(1).await;
    // `paymesh init` again: harmless, and nothing for an operator reading
    // the logs to take for a failure.
    let out = ok(&region, &["init"]);
    assert!(out.contains("already initialised"), "{out}");
    for id in 1..=3 {
        let log = std::fs::read_to_string(region.path().join(format!("node-{id}.log"))).unwrap();
        assert!(!log.contains("ERROR"), "node {id} logged an error:\n{log}");
        // A log file is plain text: colours are for a terminal.
        assert!(!log.contains('\x1b'), "node {id}'s log file holds terminal colour codes:\n{log}");
    }

    let out = ok(
        &region,
        &["partner", "upsert", "--id", "wallet-a", "--home-region", "us-west", "--role", "payer", "--currency", "USD"],
    );
    assert!(out.contains("stored  wallet-a") && out.contains("payer") && out.contains("active"), "{out}");
    ok(
        &region,
        &[
            "partner",
            "upsert",
            "--id",
            "merchant-net",
            "--home-region",
            "us-west",
            "--role",
            "payee",
            "--currency",
            "USD",
        ],
    );
    let top_up = [
        "position",
        "top-up",
        "--partner",
        "wallet-a",
        "--amount",
        "500",
        "--currency",
        "USD",
        "--reference",
        "wire-1",
    ];
    let out = ok(&region, &top_up);
    assert!(out.contains("posted 500.00 USD"), "{out}");
    // A repeated top-up reference credits nothing more.
    let out = ok(&region, &top_up);
    assert!(out.contains("posted 500.00 USD"), "{out}");
    // A fund-out pays some back; repeated, it debits nothing more (the
    // repeat is a later entry, answered from the node's history).
    let fund_out = [
        "position",
        "fund-out",
        "--partner",
        "wallet-a",
        "--amount",
        "120.50",
        "--currency",
        "USD",
        "--reference",
        "wire-out-1",
    ];
    let out = ok(&region, &fund_out);
    assert!(out.contains("debited wallet-a") && out.contains("posted 379.50 USD"), "{out}");
    let out = ok(&region, &fund_out);
    assert!(out.contains("posted 379.50 USD"), "{out}");
    let mut too_much = fund_out;
    too_much[5] = "379.51";
    too_much[9] = "wire-out-2";
    let err = refused(&region, OPERATOR, &too_much);
    assert!(err.contains("refused: ") && err.contains("INSUFFICIENT_POSITION"), "{err}");
    let top_up = [
        "position",
        "top-up",
        "--partner",
        "wallet-a",
        "--amount",
        "120.50",
        "--currency",
        "USD",
        "--reference",
        "wire-2",
    ];
    let out = ok(&region, &top_up);
    assert!(out.contains("posted 500.00 USD"), "{out}");
    let corridor = ["--from", "us-west:USD", "--to", "us-west:USD"];
    let mut upsert = vec!["corridor", "upsert"];
    upsert.extend(corridor);
    upsert.extend(["--min", "1", "--max", "100", "--daily-cap", "10000", "--fee-fixed", "0.10", "--fee-bps", "100"]);
    upsert.extend(["--fee-min", "0.10", "--fee-max", "5"]);
    let out = ok(&region, &upsert);
    assert!(out.contains("us-west:USD -> us-west:USD  active") && out.contains("100 bp"), "{out}");
    let out = ok(
        &region,
        &[
            "route",
            "upsert",
            "--prefix",
            "pay://merchant/",
            "--payee",
            "merchant-net",
            "--region",
            "us-west",
            "--currency",
            "USD",
        ],
    );
    assert!(out.contains("pay://merchant/ -> payee merchant-net in us-west (USD)"), "{out}");

    // The partner pays through the configuration the commands wrote.
    let client = region.partner("wallet-a");
    let quote = client
        .create_quote(wire::CreateQuoteRequest {
            qr_payload: "pay://merchant/m-1".into(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::money("20", "USD"))),
            idempotency_key: String::new(),
        })
        .await
        .unwrap();
    let quote = quote.quote.unwrap_or_else(|| panic!("quote refused: {}", quote.reject_code));
    assert_eq!(quote.total_debit, Some(common::money("20.30", "USD")), "20.00 + 0.10 + 1 %");
    let created = client
        .create_transfer(wire::CreateTransferRequest {
            idempotency_key: "cli-1".into(),
            quote_id: quote.quote_id,
            qr_payload: "pay://merchant/m-1".into(),
            payer: Some(wire::PayerDetails { name: "Ada".into(), account: "a-1".into(), reference: "r".into() }),
        })
        .await
        .unwrap();
    assert_eq!(created.reject_code, wire_common::RejectCode::Unspecified as i32);
    let paid = created.transfer.unwrap();
    assert_eq!(paid.state, wire::TransferState::Committed as i32);

    // Reads: the partner's position, the lists and the books.
    let out = ok(&region, &["partner", "show", "--id", "wallet-a"]);
    assert!(out.contains("USD posted 479.70 USD"), "{out}");
    let out = ok(&region, &["partner", "list"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    let out = ok(&region, &["corridor", "list"]);
    assert_eq!(out.lines().count(), 1, "{out}");
    let out = ok(&region, &["ledger"]);
    assert!(out.contains("balanced"), "{out}");

    // A dispute's outcome: the operator reverses the payment, once; the
    // payer gets its principal back (not the fee), the merchant gives it.
    let reverse = ["transfer", "reverse", "--transfer", paid.transfer_id.as_str(), "--reason", "dispute D-1"];
    let out = ok(&region, &reverse);
    let expected = format!("reversed {}: refund ", paid.transfer_id);
    assert!(out.contains(&expected) && out.contains("COMMITTED, 20.00 USD from the payee, 20.00 USD to"), "{out}");
    let again = ok(&region, &reverse);
    assert_eq!(again, out, "a transfer is reversed once");
    let out = ok(&region, &["partner", "show", "--id", "wallet-a"]);
    assert!(out.contains("USD posted 499.70 USD"), "{out}");
    let out = ok(&region, &["partner", "show", "--id", "merchant-net"]);
    assert!(out.contains("USD posted 0.00 USD"), "{out}");
    let err = refused(&region, OPERATOR, &["transfer", "reverse", "--transfer", "us-west:999", "--reason", "x"]);
    assert!(err.contains("NotFound") && err.contains("TransferNotFound"), "{err}");
    let out = ok(&region, &["ledger"]);
    assert!(out.contains("balanced"), "{out}");

    // Suspension stops new business; activation restarts it.
    let mut suspend = vec!["corridor", "suspend"];
    suspend.extend(corridor);
    assert!(ok(&region, &suspend).contains("suspended"));
    let out = ok(&region, &["partner", "suspend", "--id", "wallet-a"]);
    assert!(out.contains("suspended"), "{out}");
    let status = client
        .create_quote(wire::CreateQuoteRequest {
            qr_payload: "pay://merchant/m-1".into(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(common::money("20", "USD"))),
            idempotency_key: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.status().map(tonic::Status::code), Some(tonic::Code::FailedPrecondition), "{status:?}");
    assert!(ok(&region, &["partner", "activate", "--id", "wallet-a"]).contains("active"));

    // Refusals name their reason and exit with status 1.
    let err = refused(
        &region,
        OPERATOR,
        &["partner", "upsert", "--id", "Bad Id", "--home-region", "us-west", "--role", "payer", "--currency", "USD"],
    );
    assert!(err.contains("InvalidArgument") && err.contains("partner_id"), "{err}");
    let china = ["--from", "us-west:USD", "--to", "cn-east:CNY"];
    let fx = |extra: &[&'static str]| {
        let mut args = vec!["fx", "set"];
        args.extend(china);
        args.extend(extra);
        args
    };
    let err = refused(&region, OPERATOR, &fx(&["--rate", "7.1"]));
    assert!(err.contains("NotFound") && err.contains("CorridorNotFound"), "{err}");
    let mut cross = vec!["corridor", "upsert"];
    cross.extend(china);
    cross.extend(["--min", "1", "--max", "100", "--daily-cap", "10000", "--spread-bps", "50"]);
    ok(&region, &cross);
    let out = ok(&region, &fx(&["--rate", "7.1", "--valid-for-secs", "600"]));
    assert!(out.contains("us-west:USD -> cn-east:CNY  rate 7.1 valid from"), "{out}");
    let err = refused(&region, OPERATOR, &fx(&["--rate", "7.1", "--valid-from-unix-ms", "1000"]));
    assert!(err.contains("refused: RATE_NOT_APPLICABLE"), "{err}");
    // A same-currency corridor takes no rate: the reject code the contract
    // promises, not a malformed request.
    let mut same = vec!["fx", "set"];
    same.extend(corridor);
    same.extend(["--rate", "1"]);
    let err = refused(&region, OPERATOR, &same);
    assert!(err.contains("refused: RATE_NOT_APPLICABLE"), "{err}");
    let err = refused(&region, OPERATOR, &fx(&["--rate", "7.1", "--valid-for-secs", "90000"]));
    assert!(err.contains("--valid-for-secs must be 1 to 86400"), "{err}");
    let mut show = vec!["corridor", "show"];
    show.extend(china);
    let out = ok(&region, &show);
    assert!(out.contains("  rate 7.1 valid from"), "{out}");
    let err = refused(&region, OPERATOR, &["partner", "show", "--id", "ghost"]);
    assert!(err.contains("NotFound") && err.contains("PartnerNotFound"), "{err}");
    let err = refused(&region, "node-us-west-1", &["ledger"]);
    assert!(err.contains("PermissionDenied") && err.contains("may not call the admin API"), "{err}");
    let err = refused(&region, "partner-wallet-a", &["partner", "list"]);
    assert!(err.contains("PermissionDenied"), "{err}");

    // The region's idempotency window: 30 days until an operator changes it.
    let out = ok(&region, &["settings", "show"]);
    assert!(out.contains("idempotency retention  30 days"), "{out}");
    let out = ok(&region, &["settings", "set", "--idempotency-retention-days", "90"]);
    assert!(out.contains("idempotency retention  90 days"), "{out}");
    assert!(out.contains("refund window          365 days"), "{out}");
    let out = ok(&region, &["settings", "set", "--refund-window-days", "30"]);
    assert!(out.contains("refund window          30 days"), "{out}");
    let err = refused(&region, OPERATOR, &["settings", "set", "--refund-window-days", "401"]);
    assert!(err.contains("InvalidArgument") && err.contains("401 is above 400"), "{err}");
    let err = refused(&region, OPERATOR, &["settings", "set", "--idempotency-retention-days", "401"]);
    assert!(err.contains("InvalidArgument") && err.contains("401 is outside 1 to 400"), "{err}");
    let err = refused(&region, OPERATOR, &["settings", "set"]);
    assert!(err.contains("nothing to set"), "{err}");
    let err = refused(&region, "partner-wallet-a", &["settings", "show"]);
    assert!(err.contains("PermissionDenied"), "{err}");
    let out = ok(&region, &["settings", "show"]);
    assert!(out.contains("idempotency retention  90 days"), "{out}");

    // Every replica applied the same configuration.
    region.wait_converged(Duration::from_secs(20)).await;
}

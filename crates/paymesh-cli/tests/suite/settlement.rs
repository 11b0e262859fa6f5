//! Settlement windows on a mesh of real processes (3 regions × 3 nodes,
//! the demo's world): windows closed in the middle of a heavy workload
//! lose and double-count nothing, each region pair agrees on its
//! cross-border figures, and a settlement recorded moves the position
//! back once. The operator's `paymesh settlement` commands are run as an
//! operator would.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use paymesh_client::{PartnerClient, Region};
use paymesh_harness::mesh::LocalMesh;
use paymesh_harness::settlement::{self, Verdict};
use paymesh_harness::wan::WanSettings;
use paymesh_harness::{check, locality, observe, world};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;

const RAFT: &str = "heartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600";
/// Concurrent payers of the workload.
const WORKERS: usize = 24;
/// Payments each worker makes at most.
const PAYMENTS_PER_WORKER: usize = 400;

/// One worker: pay a merchant (abroad or at home, by turns) until told to
/// stop or done; how many payments it made.
async fn pay_until(
    client: Arc<PartnerClient>,
    worker: usize,
    prefixes: Vec<&'static str>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let mut made = 0;
    for n in 0..PAYMENTS_PER_WORKER {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let qr = format!("{}w{worker}-{n}", prefixes[n % prefixes.len()]);
        let amount = wire::create_quote_request::Amount::SourceAmount(common::Money {
            amount: format!("{}.{:02}", 1 + n % 7, n % 100),
            currency: "USD".into(),
        });
        let Ok(answer) = client
            .create_quote(wire::CreateQuoteRequest {
                qr_payload: qr.clone(),
                amount: Some(amount),
                idempotency_key: String::new(),
            })
            .await
        else {
            continue;
        };
        let Some(quote) = answer.quote else { continue };
        let request = wire::CreateTransferRequest {
            idempotency_key: format!("settle-{worker}-{n}"),
            quote_id: quote.quote_id,
            qr_payload: qr,
            // The payer's region marker, which the data-locality checker
            // looks for in every region's files.
            payer: Some(wire::PayerDetails {
                name: format!("Payer {}{worker}", locality::pii_marker("us-west")),
                account: format!("acct-{}{worker}", locality::pii_marker("us-west")),
                reference: format!("ref-{}{n}", locality::pii_marker("us-west")),
            }),
        };
        if client.create_transfer(request).await.is_ok() {
            made += 1;
        }
    }
    made
}

async fn close(region: &Region) -> admin::SettlementWindow {
    let answer = paymesh_harness::admin_calls::call_region(region, |mut c| async move {
        c.close_settlement_window(admin::CloseSettlementWindowRequest {}).await
    })
    .await
    .unwrap();
    answer.window.unwrap()
}

/// Run `paymesh settlement …` against `region` as its operator; exit code
/// and stdout.
fn cli(mesh: &LocalMesh, region: &str, args: &[&str], extra: &[String]) -> (i32, String) {
    let local = mesh.region(region).unwrap();
    let all: Vec<&str> =
        ["settlement"].into_iter().chain(args.iter().copied()).chain(extra.iter().map(String::as_str)).collect();
    let (code, stdout, stderr) = local.cli(&local.operator_stem(), &all).unwrap();
    (code, format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_closed_under_load_lose_nothing_and_regions_agree_on_their_figures() {
    let dir = tempfile::tempdir().unwrap();
    let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
    let mesh =
        LocalMesh::start(dir.path(), exe, &world::regions(), 3, RAFT, WanSettings::default(), &[]).await.unwrap();
    world::configure(&mesh).await.unwrap();
    let operators: Vec<(String, Region)> = mesh
        .regions
        .iter()
        .map(|(name, region)| (name.clone(), region.sdk(&region.operator_stem()).unwrap()))
        .collect();

    // Heavy load from us-west: to WeChat Pay in cn-east and to a shop at
    // home, by turns.
    let stop = Arc::new(AtomicBool::new(false));
    let wallet = Arc::new(mesh.region("us-west").unwrap().partner("paypal-us").unwrap());
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(pay_until(wallet.clone(), w, vec!["wxp://", "usqr://shop/"], stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Window 1 closes in every region while payments flow.
    let mut firsts = Vec::new();
    for (name, operator) in &operators {
        let window = close(operator).await;
        assert_eq!(window.number, 1);
        firsts.push((name.clone(), window));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut made = 0;
    for worker in workers {
        made += worker.await.unwrap();
    }
    assert!(made > 200, "the workload made only {made} payments");
    println!("{made} payments made; window 1 closed in every region while they flowed");
    let us_first = &firsts.iter().find(|(n, _)| n == "us-west").unwrap().1;
    assert!(!us_first.positions.is_empty() && !us_first.sent.is_empty(), "window 1 holds payments: {us_first:?}");

    // Everything final everywhere; every checker holds.
    let partners = observe::Partners { wallets: &world::WALLETS, merchants: &world::MERCHANTS };
    let observed = observe::live_mesh(&mesh, partners, Duration::from_secs(60), "process").await.unwrap();
    let verdict = check::check_with(&check::of_observation(), &observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));

    // Window 2 closes once everything settled: windows 1 and 2 together
    // hold every payment of the run, each once, as the partners' own
    // ListTransfers add them up.
    let mut windows = Vec::new();
    for ((name, operator), (_, first)) in operators.iter().zip(&firsts) {
        let second = close(operator).await;
        assert_eq!(second.number, 2);
        let both = [settlement::observed_window(first), settlement::observed_window(&second)];
        for window in &both {
            let lines = settlement::unbalanced(name, window);
            assert!(lines.is_empty(), "{lines:?}");
        }
        let held = &observed.observation.as_ref().unwrap().regions[name];
        let off = settlement::nets_against_transfers(name, held, &both);
        assert!(off.is_empty(), "{off:?}");
        windows.push((name.clone(), operator, [first.clone(), second]));
    }

    // Each pair agrees on both windows, both ways round.
    for (a, from, _) in &windows {
        for (b, to, _) in windows.iter().filter(|(b, _, _)| b != a) {
            for number in [1, 2] {
                let pair = settlement::cross_check((from, a), (to, b), number).await.unwrap();
                assert_eq!(pair.verdict, Verdict::Agree, "{}", pair.line());
            }
        }
    }
    let us = &windows.iter().find(|(n, _, _)| n == "us-west").unwrap().2;
    let sent: u64 = us.iter().flat_map(|w| &w.sent).flat_map(|r| &r.tallies).map(|t| t.count).sum();
    assert!(sent > 0, "us-west committed cross-border payments");

    // The operator's commands: show, cross-check, record a settlement (twice
    // with one reference, refused with another).
    let (code, out) = cli(&mesh, "us-west", &["show", "--window", "1"], &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("settlement window 1 (closed") && out.contains("partner:paypal-us:USD"), "{out}");
    let cn = mesh.region("cn-east").unwrap();
    let [ca, cert, key] = cn.cert_files(&cn.operator_stem());
    let mut other: Vec<String> = vec!["--with-region".into(), "cn-east".into()];
    for addr in cn.api_addrs() {
        other.extend(["--with-node".into(), addr]);
    }
    for (flag, file) in [("--with-ca", ca), ("--with-cert", cert), ("--with-key", key)] {
        other.extend([flag.to_owned(), file.display().to_string()]);
    }
    let (code, out) = cli(&mesh, "us-west", &["cross-check", "--region", "us-west", "--window", "1"], &other);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("us-west window 1 -> cn-east") && out.contains("agree"), "{out}");

    let payer = us_first.positions.iter().find(|p| p.account == "partner:paypal-us:USD").unwrap();
    let net: rust_decimal::Decimal = payer.net.as_ref().unwrap().amount.parse().unwrap();
    assert!(net.is_sign_negative(), "the wallet paid over window 1: {net}");
    let posted = |position: Option<common::Position>| -> rust_decimal::Decimal {
        position.unwrap().posted_balance.unwrap().amount.parse().unwrap()
    };
    let before = posted(wallet.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.pop());
    let record = ["record", "--window", "1", "--account", "partner:paypal-us:USD", "--reference", "bank-2026-12-05"];
    let (code, out) = cli(&mesh, "us-west", &record, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("settled (bank-2026-12-05)"), "{out}");
    let (code, out) = cli(&mesh, "us-west", &record, &[]);
    assert_eq!(code, 0, "the same reference again: {out}");
    let after = posted(wallet.get_position(wire::GetPositionRequest::default()).await.unwrap().positions.pop());
    assert_eq!(after - before, -net, "the wallet's bank paid its window-1 debt, once");
    let mut other_reference = record;
    other_reference[6] = "bank-other";
    let (code, out) = cli(&mesh, "us-west", &other_reference, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("AlreadySettled"), "{out}");
    let (code, out) = cli(
        &mesh,
        "us-west",
        &["record", "--window", "3", "--account", "partner:paypal-us:USD", "--reference", "x"],
        &[],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("WINDOW_NOT_CLOSED"), "{out}");

    // The reconciliation files of window 1: the summary ties to the
    // window's net, the CSV rows add up to it, the ISO 20022 documents are
    // valid against the published schemas, and a payee region's pacs.008
    // holds no personal data of another region's payers.
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = |region: &str, partner: &str, kind: &str| -> String {
        let path = files.join(format!("{region}-{partner}-{kind}"));
        let args = ["file", "--window", "1", "--partner", partner, "--kind", kind, "--out", path.to_str().unwrap()];
        let (code, out) = cli(&mesh, region, &args, &[]);
        assert_eq!(code, 0, "{out}");
        path.display().to_string()
    };
    let summary = std::fs::read_to_string(file("us-west", "paypal-us", "summary")).unwrap();
    let row: Vec<&str> = summary.lines().nth(1).unwrap().split(',').collect();
    assert_eq!(row[8], row[10], "payments_net equals window_net: {summary}");
    assert_eq!(row[8].parse::<rust_decimal::Decimal>().unwrap(), net, "{summary}");
    let figure = |i: usize| row[i].parse::<rust_decimal::Decimal>().unwrap();
    assert_eq!(figure(11) + figure(8) + figure(9), figure(12), "opening + payments + other = closing: {summary}");
    let transactions = std::fs::read_to_string(file("us-west", "paypal-us", "transactions")).unwrap();
    let mut sum = rust_decimal::Decimal::ZERO;
    for line in transactions.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let amount: rust_decimal::Decimal = fields[7].parse().unwrap();
        if matches!(fields[5], "payment" | "refund") {
            sum += if fields[6] == "credit" { amount } else { -amount };
        }
    }
    assert_eq!(sum, net, "the transactions add up to the window's net");
    let mut documents = Vec::new();
    for (region, partner) in [("us-west", "paypal-us"), ("cn-east", "wechat-cn")] {
        documents.push(file(region, partner, "camt053"));
        documents.push(file(region, partner, "pacs008"));
    }
    let ours = std::fs::read_to_string(&documents[1]).unwrap();
    assert!(ours.contains(&locality::pii_marker("us-west")), "the payer's region names its payers");
    let theirs = std::fs::read_to_string(&documents[3]).unwrap();
    assert!(theirs.contains("<CdtTrfTxInf>"), "cn-east's file lists the payments it received");
    assert!(!theirs.contains(&locality::pii_marker("us-west")), "cn-east's pacs.008 names no us-west payer");
    let validate = |files: &[String]| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/iso20022.sh");
        let output = Command::new(script).arg("validate").args(files).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code(), said)
    };
    let (code, out) = validate(&documents);
    assert_eq!(code, Some(0), "{out}");
    // A broken document is refused: the validation can fail.
    let broken = files.join("broken.xml");
    std::fs::write(&broken, std::fs::read_to_string(&documents[0]).unwrap().replace("<CdtDbtInd>", "<CdtDbtInd>X"))
        .unwrap();
    let (code, out) = validate(&[broken.display().to_string()]);
    assert_eq!(code, Some(1), "{out}");

    // The settlement is not a payment: the open window did not move, and
    // the books still balance.
    let us_operator = &operators.iter().find(|(n, _)| n == "us-west").unwrap().1;
    let open = settlement::window(us_operator, 0).await.unwrap();
    assert!(open.positions.is_empty(), "{open:?}");
    let observed = observe::live_mesh(&mesh, partners, Duration::from_secs(30), "process").await.unwrap();
    let books = check::check_with(&[Box::new(check::Conservation) as Box<dyn check::Checker>], &observed);
    assert!(books.passed(), "{}", books.failures(5));
}

//! paymesh as a benchmark target: a region of `paymesh start` processes on
//! loopback (3 nodes by default), started fresh for the run, and driven
//! through the partner API over mutual TLS exactly as a wallet would.
//!
//! One transfer is what a partner does to pay a merchant's QR code:
//! `CreateQuote` (source amount, CNY) and then `CreateTransfer` with that
//! quote and a unique idempotency key. Both are Raft commands, so a transfer
//! is two round trips and two replicated, fsynced commands; it counts as
//! committed when the answer is a COMMITTED same-region transfer (payer
//! debited, merchant credited, fee booked, in one Raft entry).
//!
//! Every payer is its own partner with its own certificate and connection;
//! merchants are payee partners reached through one QR route each.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{self, StreamExt, TryStreamExt};
use paymesh_client::{ClientError, PartnerClient};
use paymesh_core::limits;
use paymesh_harness::admin_calls::{call_region, reject_name};
use paymesh_harness::local::LocalRegion;
use paymesh_harness::webhook_receiver::{Behaviour, Receiver, ReceiverCa};
use paymesh_node::identity::Identity;
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::admin::v1::history_service_client::HistoryServiceClient;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;

use super::load::{Attempt, Target};
use super::report::{Audit, AuditCheck, Totals};
use super::workload::{decimal, Pick, CURRENCY, FEE_BPS};

/// The region the benchmark creates.
const REGION: &str = "bench";
/// The operator the benchmark configures the region as.
const OPERATOR: &str = "bench";
/// Most payer or payee partners (each payer holds a TLS connection).
pub const PARTNERS_MAX: usize = 1_000;
/// Most nodes of the benchmark's region.
pub const NODES_MAX: u64 = 7;
/// Admin calls in flight while configuring.
const SETUP_CONCURRENCY: usize = 32;
/// Longest wait for the region's first leader.
const LEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the replicas to agree after the run.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Transfers listed per page by the audit.
const AUDIT_PAGE: u32 = 500;
/// Pages the audit reads per payer before giving up (5,000,000 transfers).
const AUDIT_PAGES_MAX: usize = 10_000;

/// How to set up the region.
#[derive(Clone, Debug)]
pub struct PaymeshConfig {
    /// Where the region lives; emptied at setup.
    pub dir: PathBuf,
    /// Nodes in the region.
    pub nodes: u64,
    /// The nodes' `raft.group_commit_interval_ms`.
    pub group_commit_ms: u64,
    /// Payer partners.
    pub payers: usize,
    /// Payee (merchant) partners.
    pub payees: usize,
    /// Each payer's prefunded position, in fen.
    pub prefund_minor: i64,
    /// Also configure the flooding partner ([`super::flood::FLOODER`]).
    pub flooder: bool,
    /// How each transfer is asked for.
    pub calls: Calls,
    /// Register a webhook for every payee, each with a receiver of its own
    /// in this process (HTTPS on loopback).
    pub webhooks: bool,
    /// Of those, how many receivers (the first payees') never answer.
    pub webhooks_stuck: usize,
}

/// What scraping every node's metrics during a run cost and gave
/// (`--scrape-metrics-every`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScrapeFigures {
    /// Seconds between scrapes of all the nodes.
    pub every_s: f64,
    /// Scrapes answered with 200, over all nodes.
    pub scrapes: u64,
    /// Scrapes that failed.
    pub failures: u64,
    /// The mean size of an answer, in bytes.
    pub bytes_mean: u64,
    /// The median and the longest time a scrape took, in milliseconds.
    pub ms_p50: f64,
    /// The longest.
    pub ms_max: f64,
}

/// Scrapes every node's `/metrics` every `every` until stopped, as a
/// Prometheus would.
pub struct Scraper {
    stop: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<ScrapeFigures>,
}

impl std::fmt::Debug for Scraper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraper").finish_non_exhaustive()
    }
}

impl Scraper {
    /// Start scraping `addrs` (`host:port`) every `every`.
    pub fn start(addrs: Vec<String>, every: Duration) -> Scraper {
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
            let (mut scrapes, mut failures, mut bytes) = (0u64, 0u64, 0u64);
            let mut took = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stopped.notified() => break,
                    _ = tick.tick() => {}
                }
                for addr in &addrs {
                    let started = std::time::Instant::now();
                    let answer = async { http.get(format!("http://{addr}/metrics")).send().await?.bytes().await };
                    match answer.await {
                        Ok(body) => {
                            scrapes += 1;
                            bytes += body.len() as u64;
                            took.push(started.elapsed().as_secs_f64() * 1000.0);
                        }
                        Err(_) => failures += 1,
                    }
                }
            }
            took.sort_by(f64::total_cmp);
            ScrapeFigures {
                every_s: every.as_secs_f64(),
                scrapes,
                failures,
                bytes_mean: bytes.checked_div(scrapes).unwrap_or(0),
                ms_p50: took.get(took.len() / 2).copied().unwrap_or(0.0),
                ms_max: took.last().copied().unwrap_or(0.0),
            }
        });
        Scraper { stop, task }
    }

    /// Stop, and what the scrapes gave.
    pub async fn finish(self) -> anyhow::Result<ScrapeFigures> {
        self.stop.notify_one();
        self.task.await.context("the metrics scraper")
    }
}

/// What the payees' webhook receivers got over a run (`--webhooks`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct WebhookFigures {
    /// Receivers that answer.
    pub answering: usize,
    /// Receivers that never answer.
    pub stuck: usize,
    /// Distinct events the answering receivers got.
    pub events: u64,
    /// Events the answering receivers' partners had at the end, which
    /// they should all have got.
    pub expected: u64,
    /// Events received again (at least once delivery).
    pub repeats: u64,
    /// From an event's time in the region to its arrival, over the
    /// answering receivers' first copies: p50, p99 and max, ms.
    pub latency_ms_p50: u64,
    /// As above, p99.
    pub latency_ms_p99: u64,
    /// As above, the most.
    pub latency_ms_max: u64,
    /// How long after the run the answering receivers had everything, s
    /// (`None`: not within the wait).
    pub caught_up_after_s: Option<f64>,
    /// Requests the stuck receivers got (each held until the node's
    /// timeout).
    pub stuck_requests: usize,
}

/// How the benchmark's workers ask for each transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Calls {
    /// `CreateQuote` then `CreateTransfer`, each its own request.
    QuoteThenTransfer,
    /// One `CreatePayment` request per transfer.
    OneCall,
    /// One `CreatePayment` call per transfer, which the SDK gathers with the
    /// payer's other calls in flight into `CreateTransfers` requests.
    Batched,
}

/// The region and one partner client per payer.
pub struct PaymeshTarget {
    region: Mutex<Option<LocalRegion>>,
    payers: Vec<PartnerClient>,
    /// The flooding partner's client, when configured.
    pub flooder: Option<Arc<PartnerClient>>,
    /// Which run on this region this is: part of every idempotency key, so a
    /// second run's keys are new.
    pub run: std::sync::atomic::AtomicU64,
    payees: usize,
    dir: PathBuf,
    calls: Calls,
    /// The payees' webhook receivers (`--webhooks`), by payee, with whether
    /// each answers.
    webhooks: Vec<(String, bool, Receiver)>,
}

/// The secret every bench webhook is signed with.
const WEBHOOK_SECRET: &str = "paymesh-bench-webhook-secret-0123456789";

impl std::fmt::Debug for PaymeshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymeshTarget")
            .field("dir", &self.dir)
            .field("payers", &self.payers.len())
            .field("payees", &self.payees)
            .finish()
    }
}

fn payer_id(index: usize) -> String {
    format!("payer-{index:05}")
}

fn payee_id(index: usize) -> String {
    format!("merchant-{index:05}")
}

/// A QR code of payee `index`.
pub fn payee_qr(index: usize) -> String {
    format!("{}shop", qr_prefix(index))
}

/// The QR route prefix of payee `index`, and a code on it.
fn qr_prefix(index: usize) -> String {
    format!("pay://bench/m{index:05}/")
}

fn money(minor: i64) -> Option<common::Money> {
    Some(common::Money { amount: decimal(minor), currency: CURRENCY.to_owned() })
}

/// A reject code's short name, for the report.
fn code_name(code: i32) -> String {
    reject_name(code).to_lowercase()
}

/// A failed call's short reason: the step and the gRPC code (messages
/// would make every failure a reason of its own).
fn failure(step: &str, error: &ClientError) -> Attempt {
    match error.status() {
        Some(status) => Attempt::Failed(format!("{step}: {:?}", status.code())),
        None => Attempt::Failed(format!("{step}: {error}")),
    }
}

impl PaymeshTarget {
    /// Every node's metrics listener, `host:port`.
    pub fn metrics_addrs(&self) -> Vec<String> {
        let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(|r| r.nodes.values().map(|n| n.metrics_addr.clone()).collect()).unwrap_or_default()
    }
}

impl PaymeshTarget {
    /// Start a fresh region in `config.dir`, configure the partners, the
    /// corridor and the routes, prefund the payers, and connect them.
    pub async fn setup(config: &PaymeshConfig) -> anyhow::Result<PaymeshTarget> {
        if config.payers == 0 || config.payers > PARTNERS_MAX || config.payees == 0 || config.payees > PARTNERS_MAX {
            bail!("--payers and --payees must be 1 to {PARTNERS_MAX} for paymesh");
        }
        if config.nodes == 0 || config.nodes > NODES_MAX {
            bail!("--paymesh-nodes must be 1 to {NODES_MAX}");
        }
        if config.dir.exists() {
            std::fs::remove_dir_all(&config.dir)
                .with_context(|| format!("emptying the region directory {}", config.dir.display()))?;
        }
        let exe = std::env::current_exe().context("finding the paymesh binary")?;
        let mut holders = Vec::with_capacity(config.payers + config.payees);
        for index in 0..config.payers {
            holders.push(Identity::partner(&payer_id(index))?);
        }
        for index in 0..config.payees {
            holders.push(Identity::partner(&payee_id(index))?);
        }
        if config.flooder {
            holders.push(Identity::partner(super::flood::FLOODER)?);
        }
        let raft = format!("group_commit_interval_ms = {}", config.group_commit_ms);
        let mut region = LocalRegion::plan(&config.dir, REGION, &exe, OPERATOR, holders, config.nodes, &raft)?;
        let receivers = if config.webhooks {
            let ca = ReceiverCa::new(&config.dir)?;
            let section = ca.node_config("");
            for node in region.nodes.values_mut() {
                node.extra_config = section.clone();
            }
            Some(ca)
        } else {
            None
        };
        region.launch()?;
        region.initialize(1, LEADER_TIMEOUT).await?;
        configure(&region, config).await?;
        let mut webhooks = Vec::new();
        if let Some(ca) = receivers {
            let operator = region.sdk(&region.operator_stem())?;
            for index in 0..config.payees {
                let answers = index >= config.webhooks_stuck;
                let receiver = ca.receiver(if answers { Behaviour::Accept } else { Behaviour::Hang }).await?;
                paymesh_harness::webhooks::set(&operator, &payee_id(index), &receiver.url(), WEBHOOK_SECRET)
                    .await
                    .with_context(|| format!("registering {}'s webhook", payee_id(index)))?;
                webhooks.push((payee_id(index), answers, receiver));
            }
        }
        let mut payers = Vec::with_capacity(config.payers);
        for index in 0..config.payers {
            payers.push(match config.calls {
                Calls::Batched => region.partner(&payer_id(index))?,
                Calls::QuoteThenTransfer | Calls::OneCall => region.partner_unbatched(&payer_id(index))?,
            });
        }
        let flooder =
            if config.flooder { Some(Arc::new(region.partner_unbatched(super::flood::FLOODER)?)) } else { None };
        Ok(PaymeshTarget {
            region: Mutex::new(Some(region)),
            payers,
            flooder,
            run: std::sync::atomic::AtomicU64::new(0),
            payees: config.payees,
            dir: config.dir.clone(),
            calls: config.calls,
            webhooks,
        })
    }

    /// What the payees' webhook receivers got (`None` without
    /// `--webhooks`): waits, up to `wait`, until the answering ones have
    /// every event their partners have.
    pub async fn webhook_figures(&self, wait: Duration) -> anyhow::Result<Option<WebhookFigures>> {
        if self.webhooks.is_empty() {
            return Ok(None);
        }
        let operator = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { bail!("the region was already stopped") };
            region.sdk(&region.operator_stem())?
        };
        let started = std::time::Instant::now();
        let newest: BTreeMap<String, u64> =
            call_region(&operator, |mut c| async move { c.list_webhooks(admin::ListWebhooksRequest {}).await })
                .await?
                .webhooks
                .into_iter()
                .map(|w| (w.partner_id, w.newest_cursor))
                .collect();
        let mut caught_up_after_s = None;
        let mut latencies = Vec::new();
        let (events, repeats, expected) = loop {
            latencies.clear();
            let (mut events, mut repeats, mut expected) = (0u64, 0u64, 0u64);
            let mut behind = false;
            for (payee, _, receiver) in self.webhooks.iter().filter(|(_, answers, _)| *answers) {
                let mut seen = std::collections::BTreeSet::new();
                let (delivered, bad) = receiver.events(&[WEBHOOK_SECRET], 60_000);
                if bad > 0 {
                    bail!("{bad} deliveries to {payee} did not verify");
                }
                for (arrived, event) in delivered {
                    if seen.insert(event.cursor) {
                        latencies.push(arrived.saturating_sub(u64::try_from(event.at_unix_ms).unwrap_or(0)));
                    } else {
                        repeats += 1;
                    }
                }
                let want = newest.get(payee).copied().unwrap_or(0);
                behind |= (seen.len() as u64) < want;
                events += seen.len() as u64;
                expected += want;
            }
            if !behind {
                caught_up_after_s = Some(started.elapsed().as_secs_f64());
                break (events, repeats, expected);
            }
            if started.elapsed() >= wait {
                break (events, repeats, expected);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        latencies.sort_unstable();
        let at = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0);
        let stuck: Vec<&Receiver> = self.webhooks.iter().filter(|(_, a, _)| !*a).map(|(_, _, r)| r).collect();
        Ok(Some(WebhookFigures {
            answering: self.webhooks.len() - stuck.len(),
            stuck: stuck.len(),
            events,
            expected,
            repeats,
            latency_ms_p50: at(0.5),
            latency_ms_p99: at(0.99),
            latency_ms_max: latencies.last().copied().unwrap_or(0),
            caught_up_after_s,
            stuck_requests: stuck.iter().map(|r| r.received().len()).sum(),
        }))
    }

    /// Check the region's books after the run: the ledger balances, every
    /// replica holds the same state, every node synced its log, and the
    /// committed transfers the region lists are those the load generator saw
    /// committed (`totals`, warm-up included).
    pub async fn audit(&self, totals: &Totals) -> anyhow::Result<Audit> {
        let mut checks = Vec::new();
        let (operator, cluster) = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { bail!("the region was already stopped") };
            (region.sdk(&region.operator_stem())?, region.client()?)
        };
        let ledger =
            call_region(
                &operator,
                |mut c| async move { c.get_ledger_summary(admin::GetLedgerSummaryRequest {}).await },
            )
            .await?;
        let detail = ledger
            .currencies
            .iter()
            .map(|c| {
                let show = |m: &Option<common::Money>| m.as_ref().map_or("-".to_owned(), |m| m.amount.clone());
                format!("{}: debits {} credits {}", c.currency, show(&c.debits_posted), show(&c.credits_posted))
            })
            .collect::<Vec<_>>()
            .join("; ");
        checks.push(AuditCheck {
            name: "debits equal credits in every currency, no position beyond its cap".to_owned(),
            holds: ledger.balanced,
            detail: if ledger.balanced { detail } else { format!("{}; {detail}", ledger.violation) },
        });

        let mut listed = 0u64;
        for client in &self.payers {
            listed += count_committed(client).await?;
        }
        let holds = listed >= totals.committed && listed <= totals.committed + totals.failed;
        checks.push(AuditCheck {
            name: "committed transfers listed equal committed transfers seen".to_owned(),
            holds,
            detail: format!(
                "{listed} listed, {} seen committed, {} failed with an unknown outcome",
                totals.committed, totals.failed
            ),
        });

        let converged = {
            let addrs: Vec<String> = {
                let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
                guard.as_ref().map(LocalRegion::api_addrs).unwrap_or_default()
            };
            wait_agreement(&cluster, &addrs).await
        };
        match converged {
            Ok(nodes) => {
                let syncs: Vec<String> =
                    nodes.iter().map(|n| format!("node {}: {} fsyncs", n.node_id, n.log_syncs)).collect();
                checks.push(AuditCheck {
                    name: "every replica applied the same state".to_owned(),
                    holds: true,
                    detail: format!(
                        "{} nodes at applied index {}",
                        nodes.len(),
                        nodes.first().and_then(|n| n.applied_index).unwrap_or(0)
                    ),
                });
                checks.push(AuditCheck {
                    name: "commits were durable (every node fsynced its log)".to_owned(),
                    holds: nodes.iter().all(|n| n.log_syncs > 0),
                    detail: syncs.join(", "),
                });
            }
            Err(e) => checks.push(AuditCheck {
                name: "every replica applied the same state".to_owned(),
                holds: false,
                detail: format!("{e:#}"),
            }),
        }
        Ok(Audit::new(checks))
    }

    /// Set the flooder's request rate (and burst) to `rate`, as an operator.
    pub async fn limit_flooder(&self, rate: u32) -> anyhow::Result<()> {
        let operator = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { bail!("the region was already stopped") };
            region.sdk(&region.operator_stem())?
        };
        set_request_rate(&operator, super::flood::FLOODER, rate, rate).await
    }

    /// Each running node's id and what `read` finds for its process id (a
    /// node whose process is gone, or whose value cannot be read, is left out).
    fn per_node<T>(&self, read: impl Fn(u32) -> Option<T>) -> Vec<(u64, T)> {
        let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
        let Some(region) = guard.as_ref() else { return Vec::new() };
        region.nodes.values().filter_map(|node| Some((node.id, read(node.child.as_ref()?.id())?))).collect()
    }

    /// Each node's id and the memory its history engine holds (block cache
    /// plus write buffers, bytes), as its `GetHistoryStatus` says; a node
    /// that does not answer within a second is left out.
    pub async fn engine_bytes(&self) -> Vec<(u64, u64)> {
        let (operator, addrs) = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { return Vec::new() };
            let Ok(operator) = region.sdk(&region.operator_stem()) else { return Vec::new() };
            let addrs: Vec<(u64, String)> = region.nodes.iter().map(|(id, n)| (*id, n.api_addr.clone())).collect();
            (operator, addrs)
        };
        let mut held = Vec::new();
        for (node, addr) in addrs {
            let Ok(channel) = operator.channel(&addr) else { continue };
            let mut history = HistoryServiceClient::new(channel);
            let ask = history.get_history_status(admin::GetHistoryStatusRequest {});
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
                let status = status.into_inner();
                held.push((node, status.engine_cache_bytes + status.engine_write_buffer_bytes));
            }
        }
        held
    }

    /// Each running node's id and resident memory (VmRSS, KiB), from
    /// `/proc/<pid>/status`.
    pub fn resident_kib(&self) -> Vec<(u64, u64)> {
        self.per_node(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
    }

    /// The bytes each node's history holds on disk, by node id.
    pub fn history_bytes(&self) -> Vec<(u64, u64)> {
        let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
        let Some(region) = guard.as_ref() else { return Vec::new() };
        region
            .nodes
            .values()
            .map(|node| {
                let dir = node.data_dir.join("state").join(paymesh_store::state_machine::HISTORY_DIR);
                (node.id, super::soak::dir_bytes(&dir))
            })
            .collect()
    }

    /// CPU time (user and system, in seconds) each node's process has used so
    /// far, by node id, from `/proc/<pid>/stat`.
    pub fn cpu_seconds(&self) -> Vec<(u64, f64)> {
        self.per_node(process_cpu_seconds)
    }

    /// Stop the region's processes (SIGTERM, bounded wait).
    pub fn shutdown(&self) -> anyhow::Result<()> {
        let region = self.region.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut region) = region {
            region.stop()?;
        }
        Ok(())
    }
}

/// What closing the region's settlement window in the middle of a run
/// took and held (`--close-window-at`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct WindowClose {
    /// Seconds into the run (warm-up included) the close was sent.
    pub sent_at_s: f64,
    /// How long the close call took, in milliseconds: proposed, replicated,
    /// applied, and the window read back.
    pub close_ms: f64,
    /// The window closed.
    pub window: u64,
    /// Accounts that moved in it.
    pub positions: usize,
    /// What the payees received over it (the payments' volume), in CNY.
    pub volume: String,
    /// Transfers committed before the close, counted from the run's
    /// per-second figures (to the second).
    pub committed_before: u64,
    /// The highest per-second p99 of the payments that started while the
    /// close ran (the second it was sent and the next).
    pub p99_ms_while_closing: Option<f64>,
    /// The median per-second p99 of the other seconds.
    pub p99_ms_median_second: Option<f64>,
    /// The run's p99.
    pub p99_ms_run: Option<f64>,
}

/// What wiping a follower under load and letting it rejoin took.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Rejoin {
    /// The node wiped.
    pub node: u64,
    /// The leader it caught up from.
    pub leader: u64,
    /// The leader's applied index when the node was wiped.
    pub leader_applied: u64,
    /// Seconds from the wipe until the node's applied index reached the
    /// leader's (read just before it).
    pub seconds: f64,
    /// The records the node's history held then, and their bytes on disk.
    pub history_records: u64,
    /// MiB of the node's history directory then.
    pub history_mib: f64,
    /// The highest resident memory seen (sampled each 250 ms) meanwhile, MiB.
    pub peak_rss_mib_rejoined: f64,
    /// Likewise for the leader.
    pub peak_rss_mib_leader: f64,
}

impl PaymeshTarget {
    /// Kill a follower, wipe its data directory and start it again while
    /// the load runs; wait (at most `timeout`) until it has caught up, and
    /// say how long that took and what memory both sides used.
    /// Close the region's settlement window: how long the call took, and
    /// the window.
    pub async fn close_window(&self) -> anyhow::Result<(Duration, admin::SettlementWindow)> {
        let operator = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { bail!("the region was already stopped") };
            region.sdk(&region.operator_stem())?
        };
        let started = std::time::Instant::now();
        let answer = call_region(&operator, |mut c| async move {
            c.close_settlement_window(admin::CloseSettlementWindowRequest {}).await
        })
        .await?;
        let took = started.elapsed();
        Ok((took, answer.window.context("the node closed the window but did not return it")?))
    }

    pub async fn rejoin(&self, timeout: Duration) -> anyhow::Result<Rejoin> {
        let (client, operator, addrs) = {
            let guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_ref() else { bail!("the region was already stopped") };
            let addrs: BTreeMap<u64, String> = region.nodes.iter().map(|(id, n)| (*id, n.api_addr.clone())).collect();
            (region.client()?, region.sdk(&region.operator_stem())?, addrs)
        };
        let mut leader = None;
        for addr in addrs.values() {
            leader = leader.or(client.status(addr, false).await.ok().and_then(|s| s.leader_id));
        }
        let leader = leader.context("the region has no leader")?;
        let leader_addr = addrs.get(&leader).context("the leader is not one of the region's nodes")?.clone();
        let node = *addrs.keys().rev().find(|id| **id != leader).context("no follower to wipe")?;
        let leader_applied = client.status(&leader_addr, false).await?.applied_index.unwrap_or(0);
        {
            let mut guard = self.region.lock().unwrap_or_else(|p| p.into_inner());
            let Some(region) = guard.as_mut() else { bail!("the region was already stopped") };
            region.kill(node)?;
            region.wipe(node)?;
            region.spawn(node)?;
        }
        eprintln!("rejoin: node {node} wiped at leader index {leader_applied}; catching up from node {leader}");
        let started = tokio::time::Instant::now();
        let (mut peak_node, mut peak_leader) = (0u64, 0u64);
        loop {
            for (id, kib) in self.resident_kib() {
                if id == node {
                    peak_node = peak_node.max(kib);
                } else if id == leader {
                    peak_leader = peak_leader.max(kib);
                }
            }
            let ahead = client.status(&leader_addr, false).await.ok().and_then(|s| s.applied_index);
            let reached = client.status(&addrs[&node], false).await.ok().and_then(|s| s.applied_index);
            if let (Some(ahead), Some(reached)) = (ahead, reached) {
                if reached >= ahead {
                    break;
                }
            }
            if started.elapsed() > timeout {
                bail!("node {node} did not catch up within {timeout:?} (applied {reached:?}, leader {ahead:?})");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let channel = operator.channel(&addrs[&node])?;
        let status = HistoryServiceClient::new(channel)
            .get_history_status(admin::GetHistoryStatusRequest {})
            .await
            .context("the rejoined node's history status")?
            .into_inner();
        let history = self.history_bytes().into_iter().find(|(id, _)| *id == node).map_or(0, |(_, b)| b);
        let mib = |kib: u64| kib as f64 / 1024.0;
        Ok(Rejoin {
            node,
            leader,
            leader_applied,
            seconds,
            history_records: status.records,
            history_mib: history as f64 / (1024.0 * 1024.0),
            peak_rss_mib_rejoined: mib(peak_node),
            peak_rss_mib_leader: mib(peak_leader),
        })
    }
}

/// Wait (bounded) until the nodes at `addrs` report the same applied index
/// and state digest.
async fn wait_agreement(
    client: &paymesh_node::cluster_client::ClusterClient,
    addrs: &[String],
) -> anyhow::Result<Vec<admin::GetNodeStatusResponse>> {
    let deadline = tokio::time::Instant::now() + CONVERGE_TIMEOUT;
    loop {
        let mut statuses = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if let Ok(status) = client.status(addr, true).await {
                statuses.push(status);
            }
        }
        let agree = statuses.len() == addrs.len()
            && statuses.iter().all(|s| {
                s.applied_index.is_some()
                    && s.applied_index == statuses[0].applied_index
                    && s.state_digest == statuses[0].state_digest
            });
        if agree {
            return Ok(statuses);
        }
        if tokio::time::Instant::now() >= deadline {
            let seen: Vec<String> =
                statuses.iter().map(|s| format!("node {} applied {:?}", s.node_id, s.applied_index)).collect();
            bail!("the replicas did not agree within {CONVERGE_TIMEOUT:?}: {}", seen.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The payer's committed transfers, counted through ListTransfers.
async fn count_committed(client: &PartnerClient) -> anyhow::Result<u64> {
    let mut count = 0u64;
    let mut token = String::new();
    for _ in 0..AUDIT_PAGES_MAX {
        let page = client
            .list_transfers(wire::ListTransfersRequest {
                state: wire::TransferState::Committed as i32,
                page_size: AUDIT_PAGE,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .context("audit: listing transfers")?;
        count += page.transfers.len() as u64;
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        token = page.next_page_token;
    }
    bail!("audit: a payer has more than {} transfers", AUDIT_PAGES_MAX as u64 * u64::from(AUDIT_PAGE))
}

/// Set `partner`'s request rate and burst, as an operator; the other limits
/// stay at their defaults.
async fn set_request_rate(
    operator: &paymesh_client::Region,
    partner: &str,
    rate: u32,
    burst: u32,
) -> anyhow::Result<()> {
    let request = admin::SetPartnerLimitsRequest {
        partner_id: partner.to_owned(),
        limits: Some(admin::PartnerLimits {
            requests_per_second: rate,
            requests_burst: burst,
            quotes_outstanding_max: limits::PARTNER_QUOTES_OUTSTANDING_DEFAULT,
            transfers_in_flight_max: limits::PARTNER_TRANSFERS_IN_FLIGHT_DEFAULT,
        }),
    };
    let answer = call_region(operator, |mut c| {
        let request = request.clone();
        async move { c.set_partner_limits(request).await }
    })
    .await?;
    if answer.reject_code != 0 {
        bail!("{partner}'s limits: {}", code_name(answer.reject_code));
    }
    Ok(())
}

/// Partners, prefunding, the corridor and the routes, `SETUP_CONCURRENCY`
/// calls at a time; any refusal fails the setup. The payers get the highest
/// request rate an operator may give: the benchmark measures the region's
/// capacity, not a partner's allowance (the flooder keeps the default).
async fn configure(region: &LocalRegion, config: &PaymeshConfig) -> anyhow::Result<()> {
    let operator = region.sdk(&region.operator_stem())?;
    let operator = &operator;
    let mut partners = Vec::with_capacity(config.payers + config.payees);
    for index in 0..config.payers {
        partners.push((payer_id(index), admin::PartnerRole::Payer));
    }
    for index in 0..config.payees {
        partners.push((payee_id(index), admin::PartnerRole::Payee));
    }
    if config.flooder {
        partners.push((super::flood::FLOODER.to_owned(), admin::PartnerRole::Payer));
    }
    stream::iter(partners)
        .map(|(id, role)| async move {
            let request = admin::UpsertPartnerRequest {
                partner_id: id.clone(),
                home_region: REGION.to_owned(),
                role: role as i32,
                settlement_currency: CURRENCY.to_owned(),
                net_debit_cap: money(0),
            };
            let answer = call_region(operator, |mut c| {
                let request = request.clone();
                async move { c.upsert_partner(request).await }
            })
            .await?;
            if answer.reject_code != 0 {
                bail!("partner {id}: {}", code_name(answer.reject_code));
            }
            Ok(())
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    stream::iter(0..config.payers)
        .map(|index| async move {
            let (rate, burst) = (limits::PARTNER_REQUESTS_PER_SECOND_MAX, limits::PARTNER_REQUESTS_BURST_MAX);
            set_request_rate(operator, &payer_id(index), rate, burst).await
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    stream::iter(0..config.payers)
        .map(|index| async move {
            let request = admin::TopUpPositionRequest {
                partner_id: payer_id(index),
                amount: money(config.prefund_minor),
                reference: format!("prefund-{index}"),
            };
            let answer = call_region(operator, |mut c| {
                let request = request.clone();
                async move { c.top_up_position(request).await }
            })
            .await?;
            if answer.reject_code != 0 {
                bail!("prefunding {}: {}", payer_id(index), code_name(answer.reject_code));
            }
            Ok(())
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;

    let corridor = admin::UpsertCorridorRequest {
        corridor: Some(common::CorridorId {
            source_currency: CURRENCY.to_owned(),
            source_region: REGION.to_owned(),
            destination_currency: CURRENCY.to_owned(),
            destination_region: REGION.to_owned(),
        }),
        spread_bps: 0,
        fee: Some(admin::FeeSchedule {
            fixed: money(0),
            rate_bps: FEE_BPS as u32,
            min: money(0),
            // 0.6 % of the largest transfer is 6 yuan.
            max: money(100_000),
        }),
        min_amount: money(1),
        max_amount: money(10_000_000),
        // A cap no run reaches: the benchmark measures throughput, not caps.
        daily_cap: money(100_000_000_000_000),
    };
    let answer = call_region(operator, |mut c| {
        let request = corridor.clone();
        async move { c.upsert_corridor(request).await }
    })
    .await?;
    if answer.reject_code != 0 {
        bail!("the corridor: {}", code_name(answer.reject_code));
    }

    stream::iter(0..config.payees)
        .map(|index| async move {
            let request = admin::UpsertPayeeRouteRequest {
                qr_prefix: qr_prefix(index),
                payee_partner_id: payee_id(index),
                region: REGION.to_owned(),
                currency: CURRENCY.to_owned(),
            };
            let answer = call_region(operator, |mut c| {
                let request = request.clone();
                async move { c.upsert_payee_route(request).await }
            })
            .await?;
            if answer.reject_code != 0 {
                bail!("route to {}: {}", payee_id(index), code_name(answer.reject_code));
            }
            Ok(())
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

impl Target for PaymeshTarget {
    fn name(&self) -> String {
        match self.calls {
            Calls::QuoteThenTransfer => "paymesh".to_owned(),
            Calls::OneCall => "paymesh-one-call".to_owned(),
            Calls::Batched => "paymesh-batched".to_owned(),
        }
    }

    fn processes(&self) -> Vec<(String, u32)> {
        self.per_node(Some).into_iter().map(|(id, pid)| (format!("node-{id}"), pid)).collect()
    }

    async fn transfer(&self, worker: usize, sequence: u64) -> Attempt {
        let pick = Pick::new(worker, sequence, self.payers.len(), self.payees);
        let Some(client) = self.payers.get(pick.payer) else {
            return Attempt::Failed("paymesh: no such payer".to_owned());
        };
        let qr = format!("{}till-1", qr_prefix(pick.payee));
        let key = format!("r{}-w{worker}-{sequence}", self.run.load(std::sync::atomic::Ordering::Relaxed));
        let payer = wire::PayerDetails {
            name: "Bench Payer".to_owned(),
            account: format!("acct-{worker}"),
            reference: format!("bench {sequence}"),
        };
        let amount = common::Money { amount: decimal(pick.amount_minor), currency: CURRENCY.to_owned() };
        if self.calls != Calls::QuoteThenTransfer {
            let request = wire::CreatePaymentRequest {
                idempotency_key: key,
                qr_payload: qr,
                amount: Some(wire::create_payment_request::Amount::SourceAmount(amount)),
                max_total_debit: None,
                payer: Some(payer),
            };
            let answer = client.create_payment(request).await;
            let answer =
                answer.map(|a| wire::CreateTransferResponse { transfer: a.transfer, reject_code: a.reject_code });
            return transfer_attempt(answer);
        }
        let quote = wire::CreateQuoteRequest {
            qr_payload: qr.clone(),
            amount: Some(wire::create_quote_request::Amount::SourceAmount(amount)),
            idempotency_key: String::new(),
        };
        let quote = match client.create_quote(quote).await {
            Ok(answer) => match answer.quote {
                Some(quote) => quote,
                None => return Attempt::Declined(format!("quote: {}", code_name(answer.reject_code))),
            },
            Err(e) => return failure("quote", &e),
        };
        let request = wire::CreateTransferRequest {
            idempotency_key: key,
            quote_id: quote.quote_id,
            qr_payload: qr,
            payer: Some(payer),
        };
        transfer_attempt(client.create_transfer(request).await)
    }
}

/// What a transfer's creation (or a one-call payment's) came to.
fn transfer_attempt(answer: Result<wire::CreateTransferResponse, ClientError>) -> Attempt {
    match answer {
        Ok(answer) if answer.reject_code != 0 => Attempt::Declined(code_name(answer.reject_code)),
        Ok(answer) => match answer.transfer.map(|t| t.state) {
            Some(state) if state == wire::TransferState::Committed as i32 => Attempt::Committed,
            state => Attempt::Failed(format!("transfer: unexpected state {state:?}")),
        },
        Err(e) => failure("transfer", &e),
    }
}

/// CPU time (user and system, in seconds) process `pid` has used, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of 1/100 s, the
/// value Linux reports to user space on every platform paymesh builds for).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
}

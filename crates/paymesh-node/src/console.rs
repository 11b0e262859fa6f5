//! The operator console: a region at a glance, as web pages a node serves
//! to the region's operators.
//!
//! Served over HTTPS on the listener `[console] listen` names. The TLS
//! handshake asks for a client certificate signed by the region's CA (the
//! same mutual TLS as the admin API), and only an operator's certificate
//! that is not revoked gets a page: a partner's or a node's is refused with
//! 403, and a browser without a certificate does not get past the
//! handshake. The pages are read-only (GET only; every change goes through
//! `paymesh` and the admin API, where it is replicated and audited), are
//! rendered on the server with escaping by construction (maud), and carry
//! no script: charts are inline SVG, and the overview refreshes itself with
//! a meta refresh. There is no JavaScript build step to keep.
//!
//! What the overview shows:
//!
//! * the region's nodes: each member's role, term, indexes and lag, asked
//!   of every member (`GetNodeStatus` with the node's own certificate, one
//!   second each), so an unreachable node shows as such;
//! * throughput and latency over the last hour, from samples this node
//!   takes every ten seconds and keeps in memory: transfers the region
//!   created per second (every replica applies them, so any node's chart
//!   is the region's), and the partner calls this node answered per second
//!   with their p50 and p99 latency (partners' clients follow the leader,
//!   so the leader's console has them);
//! * partners with their positions against their net debit caps, and their
//!   transfers in flight against their limit;
//! * corridors with their limits, today's use of the daily cap and the
//!   refund rate;
//! * remote regions with what waits in the outbox, the oldest prepare's age,
//!   the breaker's state and the calls in flight;
//! * the open settlement window and the last closed ones.
//!
//! `/transfers` lists the newest transfers (in flight, then finished from
//! history) and finds one by its id or by a partner's idempotency key.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use maud::{html, Markup, DOCTYPE};
use paymesh_client::{Credentials, RetryPolicy};
use paymesh_core::history::Recall;
use paymesh_core::id::{IdempotencyKey, TransferId};
use paymesh_core::outcome::TransferView;
use paymesh_core::partner::BusinessStatus;
use paymesh_core::{Outcome, State, Timestamp};
use paymesh_proto::admin::v1 as wire;
use paymesh_store::raft_types::Raft;
use paymesh_store::StateMachineStore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::Connected;

use crate::cluster_client::ClusterClient;
use crate::identity::{Authenticator, Identity};
use crate::metrics::{self, CallCounts, LATENCY_BUCKETS};
use crate::outbox::Links;
use crate::tls::LiveServerTls;

/// The most console connections open at once.
const CONNECTIONS_MAX: usize = 16;

/// How long one connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the charts' samples are taken.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples kept: an hour of intervals.
const SAMPLES_KEPT: usize = 361;

/// How long a member has to answer for its status.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// A follower this many entries behind the leader shows as behind.
const LAG_BEHIND_ENTRIES: u64 = 1_000;

/// The most transfers a list shows.
const TRANSFERS_SHOWN: usize = 50;

/// The most journal chunks read for the newest finished transfers.
const RECENT_CHUNKS_MAX: usize = 400;

/// The longest search text taken, in characters.
const QUERY_CHARS_MAX: usize = 256;

/// The most partners whose keys one search looks up.
const PARTNERS_SEARCHED_MAX: usize = 1_000;

/// Closed settlement windows shown besides the open one.
const WINDOWS_SHOWN: usize = 5;

/// The longest span a chart shows, in minutes.
const CHART_MINUTES: f64 = 60.0;

/// How often the overview reloads itself, in seconds.
const REFRESH_SECONDS: u32 = 10;

/// What the charts are drawn from: totals at one time.
#[derive(Clone, Debug)]
struct Sample {
    /// When, in milliseconds since the Unix epoch.
    at_ms: u64,
    /// Transfers the region had created.
    created: u64,
    /// Partner calls this node had answered.
    calls: CallCounts,
}

/// The console of one node: what its pages read from.
#[derive(Clone)]
pub struct Console {
    node_id: u64,
    raft: Raft,
    state_machine: StateMachineStore,
    links: Arc<Links>,
    auth: Authenticator,
    dialing: watch::Receiver<Credentials>,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

/// A member's status, or why it gave none.
struct Member {
    node_id: u64,
    api_addr: String,
    status: Result<wire::GetNodeStatusResponse, String>,
}

/// One line of a chart.
struct Series {
    name: &'static str,
    class: &'static str,
    /// (minutes before the newest sample, value).
    points: Vec<(f64, f64)>,
}

impl Console {
    /// The console over a node's handles; `dialing` is how the node calls
    /// its peers (their statuses).
    pub fn new(
        node_id: u64,
        raft: Raft,
        state_machine: StateMachineStore,
        links: Arc<Links>,
        auth: Authenticator,
        dialing: watch::Receiver<Credentials>,
    ) -> Console {
        Console {
            node_id,
            raft,
            state_machine,
            links,
            auth,
            dialing,
            samples: Arc::new(Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT))),
        }
    }

    /// Take a sample now.
    fn sample(&self) {
        let at_ms = crate::gateway::now().unix_ms();
        let created = self.state_machine.applied().state.transfers_created();
        let sample = Sample { at_ms, created, calls: metrics::events().partner_calls.read() };
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if samples.len() == SAMPLES_KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Serve the console on `listener` with `tls` until `shutdown`, and
    /// sample for the charts meanwhile.
    pub async fn serve(self, listener: TcpListener, tls: LiveServerTls, shutdown: impl Future<Output = ()> + Send) {
        let console = Arc::new(self);
        let sampler = {
            let console = console.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(SAMPLE_INTERVAL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    console.sample();
                }
            })
        };
        tracing::info!(addr = ?listener.local_addr().ok(), "serving the operator console over HTTPS");
        let connections = crate::listener::accepted_tls(listener, CONNECTIONS_MAX, "console", tls);
        crate::listener::serve_http1(connections, "console", CONNECTION_TIMEOUT, shutdown, |connection| {
            let (accepted, session) = connection.get_ref();
            let peer = accepted.connect_info().remote_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
            let cert: Option<Arc<[u8]>> =
                session.peer_certificates().and_then(|certs| certs.first()).map(|cert| Arc::from(cert.as_ref()));
            let console = console.clone();
            hyper::service::service_fn(move |request| {
                let console = console.clone();
                // Identified at every request, as a gRPC call is: a
                // certificate revoked (and reloaded on SIGHUP) is refused on
                // a connection opened before.
                let caller = match &cert {
                    Some(cert) => console.auth.identify_certificate(cert),
                    None => Err("no client certificate".to_owned()),
                };
                async move { Ok::<_, std::convert::Infallible>(console.answer(&request, &caller, peer).await) }
            })
        })
        .await;
        sampler.abort();
    }

    /// The answer to one request from `caller`.
    async fn answer<B>(
        &self,
        request: &hyper::Request<B>,
        caller: &Result<Identity, String>,
        peer: SocketAddr,
    ) -> hyper::Response<Full<Bytes>> {
        let operator = match caller {
            Ok(Identity::Operator(name)) => name,
            Ok(other) => {
                let why = format!("{other} may not use the console; it needs an operator certificate of the region");
                return page_response(hyper::StatusCode::FORBIDDEN, message_page("Forbidden", &why));
            }
            Err(why) => return page_response(hyper::StatusCode::FORBIDDEN, message_page("Forbidden", why)),
        };
        if request.method() != hyper::Method::GET && request.method() != hyper::Method::HEAD {
            let mut response = page_response(
                hyper::StatusCode::METHOD_NOT_ALLOWED,
                message_page("Read only", "the console only reads; make changes with paymesh and the admin API"),
            );
            response.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
            return response;
        }
        let path = request.uri().path();
        tracing::info!(operator = operator.as_str(), %peer, path, "console page");
        match path {
            "/" => page_response(hyper::StatusCode::OK, self.overview().await),
            "/transfers" => {
                let query = search_text(request.uri().query().unwrap_or_default());
                let console = self.clone();
                let page = tokio::task::spawn_blocking(move || console.transfers_page(&query)).await;
                match page {
                    Ok(page) => page_response(hyper::StatusCode::OK, page),
                    Err(error) => page_response(
                        hyper::StatusCode::INTERNAL_SERVER_ERROR,
                        message_page("Error", &format!("the search failed: {error}")),
                    ),
                }
            }
            "/console.css" => {
                let mut response = hyper::Response::new(Full::new(Bytes::from_static(STYLE.as_bytes())));
                response
                    .headers_mut()
                    .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/css"));
                response
            }
            _ => page_response(hyper::StatusCode::NOT_FOUND, message_page("Not found", "no such page")),
        }
    }

    /// Every member's status, asked at once.
    async fn members(&self) -> Vec<Member> {
        let metrics = self.raft.metrics().borrow().clone();
        let nodes: Vec<(u64, String)> =
            metrics.membership_config.membership().nodes().map(|(id, addr)| (*id, addr.api_addr.clone())).collect();
        let credentials = self.dialing.borrow().clone();
        let policy = RetryPolicy { attempts: 1, deadline: STATUS_TIMEOUT };
        let client =
            ClusterClient::with_credentials(nodes.iter().map(|(_, a)| a.clone()).collect(), credentials, policy);
        let asks = nodes.into_iter().map(|(node_id, api_addr)| {
            let client = &client;
            async move {
                let status = match tokio::time::timeout(STATUS_TIMEOUT, client.status(&api_addr, false)).await {
                    Ok(Ok(status)) => Ok(status),
                    Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                    Err(_) => Err(format!("no answer within {STATUS_TIMEOUT:?}")),
                };
                Member { node_id, api_addr, status }
            }
        });
        futures::future::join_all(asks).await
    }

    /// The overview page.
    async fn overview(&self) -> Markup {
        let members = self.members().await;
        let applied = self.state_machine.applied();
        let state = &applied.state;
        let samples: Vec<Sample> = self.samples.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        let (throughput, latency) = charts(&samples);
        let windows = self.windows(state);
        let body = html! {
            section #nodes {
                h2 { "Nodes" }
                (nodes_table(&members, self.node_id))
            }
            section #charts {
                h2 { "The last hour" }
                (chart("throughput", "Throughput", "/s", &throughput))
                (chart("latency", "Partner call latency on this node", "ms", &latency))
            }
            section #partners {
                h2 { "Partners" }
                (partners_table(state))
            }
            section #corridors {
                h2 { "Corridors" }
                (corridors_table(state))
            }
            section #regions {
                h2 { "Remote regions" }
                (regions_table(&metrics::remote_regions(state, &self.links)))
            }
            section #settlement {
                h2 { "Settlement windows" }
                (windows_table(&windows))
            }
        };
        let title = format!("{} · node {}", state.region(), self.node_id);
        layout(&title, Some(REFRESH_SECONDS), body)
    }

    /// The open settlement window and the last closed ones, newest first.
    fn windows(&self, state: &State) -> Vec<paymesh_core::settlement::SettlementWindow> {
        let mut windows = vec![state.open_window()];
        let history = self.state_machine.history();
        let closed = history.closed_windows_before(state.settlement_window(), WINDOWS_SHOWN).unwrap_or_default();
        windows.extend(closed.into_iter().filter_map(|number| Recall::window(history, number)));
        windows
    }

    /// The transfers page: the search's answer, or the newest transfers.
    fn transfers_page(&self, query: &str) -> Markup {
        let applied = self.state_machine.applied();
        let state = &applied.state;
        let (heading, found, note) = if query.is_empty() {
            let mut views: Vec<TransferView> = state.transfers().map(|t| t.view.clone()).collect();
            views.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
            views.truncate(TRANSFERS_SHOWN);
            let room = TRANSFERS_SHOWN.saturating_sub(views.len());
            let (finished, note) = match self.state_machine.history().recent_transfers(room, RECENT_CHUNKS_MAX) {
                Ok(finished) => (finished, None),
                Err(error) => (Vec::new(), Some(format!("history could not be read: {error}"))),
            };
            views.extend(finished.into_iter().map(|t| t.view));
            ("The newest transfers".to_owned(), views, note)
        } else {
            let (found, note) = self.search(state, query);
            (format!("Transfers matching {query:?}"), found, note)
        };
        let body = html! {
            section #search {
                form method="get" action="/transfers" {
                    label for="q" { "Transfer id or idempotency key" }
                    " "
                    input #q type="search" name="q" value=(query) maxlength=(QUERY_CHARS_MAX) size="48";
                    " "
                    button type="submit" { "Find" }
                }
            }
            section #transfers {
                h2 { (heading) }
                @if let Some(note) = &note { p.note { (note) } }
                (transfers_table(&found))
            }
        };
        layout(&format!("{} · transfers", state.region()), None, body)
    }

    /// The transfers a search text names: by id (in flight, then history),
    /// else by idempotency key under each partner; with a note when
    /// nothing matched or history failed.
    fn search(&self, state: &State, query: &str) -> (Vec<TransferView>, Option<String>) {
        let history = self.state_machine.history();
        if let Ok(id) = TransferId::parse(query) {
            let found = match state.transfer(&id) {
                Some(transfer) => Ok(Some(transfer.view.clone())),
                None => history.get_transfer(&id).map(|t| t.map(|t| t.view)),
            };
            return match found {
                Ok(Some(view)) => (vec![view], None),
                Ok(None) => (Vec::new(), Some(format!("no transfer {id} was made in this region"))),
                Err(error) => (Vec::new(), Some(format!("history could not be read: {error}"))),
            };
        }
        let Ok(key) = IdempotencyKey::new(query) else {
            return (Vec::new(), Some("neither a transfer id nor an idempotency key".to_owned()));
        };
        let mut found: Vec<TransferView> =
            state.transfers().filter(|t| t.view.idempotency_key == key).map(|t| t.view.clone()).collect();
        for partner in state.partners().take(PARTNERS_SEARCHED_MAX) {
            match history.get_idempotency(&partner.config.id, &key) {
                Ok(Some(record)) => {
                    if let Outcome::Transfer(view) = record.outcome {
                        // The finished record if there is one.
                        let view = match history.get_transfer(&view.id) {
                            Ok(Some(finished)) => finished.view,
                            _ => (*view).clone(),
                        };
                        if !found.iter().any(|f| f.id == view.id) {
                            found.push(view);
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => return (found, Some(format!("history could not be read: {error}"))),
            }
        }
        let note = found.is_empty().then(|| format!("no transfer under the idempotency key {query:?}"));
        (found, note)
    }
}

/// The search text of a query string: `q`, trimmed and bounded.
fn search_text(query: &str) -> String {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "q")
        .map(|(_, value)| value.trim().chars().take(QUERY_CHARS_MAX).collect())
        .unwrap_or_default()
}

/// A page as an HTML response, with headers that keep a browser from
/// running, framing or caching anything of it.
fn page_response(status: hyper::StatusCode, page: Markup) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from(page.into_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let mut set = |name: hyper::header::HeaderName, value: &'static str| {
        headers.insert(name, hyper::header::HeaderValue::from_static(value));
    };
    set(hyper::header::CONTENT_TYPE, "text/html; charset=utf-8");
    set(
        hyper::header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(hyper::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(hyper::header::CACHE_CONTROL, "no-store");
    set(hyper::header::REFERRER_POLICY, "no-referrer");
    response
}

/// The page around `body`.
fn layout(title: &str, refresh: Option<u32>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(seconds) = refresh { meta http-equiv="refresh" content=(seconds); }
                title { "paymesh · " (title) }
                link rel="stylesheet" href="/console.css";
            }
            body {
                header {
                    h1 { "paymesh · " (title) }
                    nav { a href="/" { "Overview" } " · " a href="/transfers" { "Transfers" } }
                    p.when { "As of " (crate::gateway::now().to_rfc3339()) ". Read-only." }
                }
                main { (body) }
            }
        }
    }
}

/// A page saying one thing.
fn message_page(title: &str, text: &str) -> Markup {
    layout(title, None, html! { p.note { (text) } })
}

fn role_name(role: i32) -> &'static str {
    match wire::NodeRole::try_from(role) {
        Ok(wire::NodeRole::Leader) => "leader",
        Ok(wire::NodeRole::Follower) => "follower",
        Ok(wire::NodeRole::Candidate) => "candidate",
        Ok(wire::NodeRole::Learner) => "learner",
        Ok(wire::NodeRole::Shutdown) => "shut down",
        _ => "unknown",
    }
}

fn nodes_table(members: &[Member], this_node: u64) -> Markup {
    // Lag as the leader sees it.
    let leader =
        members.iter().filter_map(|m| m.status.as_ref().ok()).find(|s| s.role == wire::NodeRole::Leader as i32);
    let lag_of = |id: u64| leader.and_then(|l| l.replication.iter().find(|r| r.node_id == id)).map(|r| r.lag);
    html! {
        table {
            thead { tr { th { "Node" } th { "API address" } th { "Role" } th { "Term" } th.num { "Last log" }
                th.num { "Applied" } th.num { "Lag" } th { "Health" } } }
            tbody {
                @for member in members {
                    tr data-node=(member.node_id) {
                        td { (member.node_id) @if member.node_id == this_node { " (this node)" } }
                        td { (member.api_addr) }
                        @match &member.status {
                            Ok(status) => {
                                @let lag = lag_of(member.node_id);
                                @let leading = status.role == wire::NodeRole::Leader as i32;
                                td { (role_name(status.role)) }
                                td { (status.current_term) }
                                td.num { (status.last_log_index.unwrap_or(0)) }
                                td.num { (status.applied_index.unwrap_or(0)) }
                                td.num { @if leading { "0" } @else { (lag.map_or("?".to_owned(), |l| l.to_string())) } }
                                @if !leading && lag.is_some_and(|l| l >= LAG_BEHIND_ENTRIES) {
                                    td.bad { "behind" }
                                } @else if status.leader_id.is_none() {
                                    td.bad { "no leader known" }
                                } @else {
                                    td.good { "healthy" }
                                }
                            }
                            Err(why) => {
                                td colspan="5" { "—" }
                                td.bad title=(why) { "unreachable: " (why) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Totals read from two samples: the change per second and the latency
/// quantiles of the calls between them.
fn charts(samples: &[Sample]) -> (Vec<Series>, Vec<Series>) {
    let newest = samples.last().map_or(0, |s| s.at_ms);
    let mut created = Vec::new();
    let mut calls = Vec::new();
    let mut errors = Vec::new();
    let mut p50 = Vec::new();
    let mut p99 = Vec::new();
    for pair in samples.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let seconds = after.at_ms.saturating_sub(before.at_ms) as f64 / 1000.0;
        if seconds <= 0.0 {
            continue;
        }
        let x = newest.saturating_sub(after.at_ms) as f64 / 60_000.0;
        created.push((x, after.created.saturating_sub(before.created) as f64 / seconds));
        calls.push((x, after.calls.calls.saturating_sub(before.calls.calls) as f64 / seconds));
        errors.push((x, after.calls.errors.saturating_sub(before.calls.errors) as f64 / seconds));
        let buckets: [u64; LATENCY_BUCKETS + 1] =
            std::array::from_fn(|i| after.calls.buckets[i].saturating_sub(before.calls.buckets[i]));
        if let (Some(median), Some(tail)) = (quantile(&buckets, 0.5), quantile(&buckets, 0.99)) {
            p50.push((x, median * 1000.0));
            p99.push((x, tail * 1000.0));
        }
    }
    let throughput = vec![
        Series { name: "transfers created", class: "s1", points: created },
        Series { name: "partner calls", class: "s2", points: calls },
        Series { name: "partner call errors", class: "s3", points: errors },
    ];
    let latency =
        vec![Series { name: "p50", class: "s1", points: p50 }, Series { name: "p99", class: "s3", points: p99 }];
    (throughput, latency)
}

/// The `q` quantile of calls counted in latency buckets, in seconds:
/// linear within the bucket it falls in (the +Inf bucket counts as its
/// lower bound); `None` without calls.
fn quantile(buckets: &[u64; LATENCY_BUCKETS + 1], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let bounds: Vec<f64> = metrics::latency_bounds().collect();
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, count) in buckets.iter().enumerate() {
        if *count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let Some(upper) = bounds.get(i) else { return Some(lower) };
            let within = ((rank - below as f64) / *count as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += count;
    }
    bounds.last().copied()
}

/// A line chart of the last hour, as inline SVG, with each series' newest
/// value written under it.
fn chart(id: &str, title: &str, unit: &str, series: &[Series]) -> Markup {
    const WIDTH: f64 = 640.0;
    const HEIGHT: f64 = 180.0;
    const LEFT: f64 = 56.0;
    const BOTTOM: f64 = 20.0;
    const TOP: f64 = 8.0;
    // The last hour, or less while the samples cover less: 5-minute steps.
    let covered = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0_f64, f64::max);
    let minutes = ((covered / 5.0).ceil() * 5.0).clamp(5.0, CHART_MINUTES);
    let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0_f64, f64::max);
    let y_max = if top > 0.0 { top * 1.1 } else { 1.0 };
    let x_of = |minutes_ago: f64| LEFT + (WIDTH - LEFT) * (1.0 - minutes_ago.min(minutes) / minutes);
    let y_of = |value: f64| TOP + (HEIGHT - BOTTOM - TOP) * (1.0 - value / y_max);
    let points = |s: &Series| {
        s.points.iter().map(|(x, y)| format!("{:.1},{:.1}", x_of(*x), y_of(*y))).collect::<Vec<_>>().join(" ")
    };
    let samples = series.iter().map(|s| s.points.len()).max().unwrap_or(0);
    html! {
        figure.chart #(id) data-points=(samples) {
            figcaption { (title) " (" (unit) ")" }
            svg xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) width=(WIDTH) height=(HEIGHT)
                role="img" aria-label=(title) {
                @for fraction in [0.0, 0.5, 1.0] {
                    @let y = y_of(y_max * fraction);
                    line.grid x1=(LEFT) x2=(WIDTH) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
                    text.axis x=(LEFT - 4.0) y=(format!("{:.1}", y + 4.0)) text-anchor="end" { (figure(y_max * fraction)) }
                }
                @for (at, anchor) in [(minutes, "start"), (minutes / 2.0, "middle"), (0.0, "end")] {
                    text.axis x=(format!("{:.1}", x_of(at))) y=(HEIGHT - 4.0) text-anchor=(anchor) {
                        @if at == 0.0 { "now" } @else if at.fract() == 0.0 { "−" (format!("{at:.0}")) " min" }
                        @else { "−" (format!("{at:.1}")) " min" }
                    }
                }
                @for s in series {
                    @if s.points.len() == 1 {
                        @let (x, y) = s.points[0];
                        circle class=(s.class) cx=(format!("{:.1}", x_of(x))) cy=(format!("{:.1}", y_of(y))) r="3" {}
                    } @else {
                        polyline class=(s.class) points=(points(s)) {}
                    }
                }
            }
            ul.legend {
                @for s in series {
                    li class=(s.class) data-series=(s.name) {
                        (s.name) ": "
                        @match s.points.last() {
                            Some((_, value)) => span.value { (figure(*value)) " " (unit) },
                            None => span.value { "no data yet (a sample every " (SAMPLE_INTERVAL.as_secs()) " s)" },
                        }
                    }
                }
            }
        }
    }
}

/// A chart's figure: three significant digits at most.
fn figure(value: f64) -> String {
    if value >= 100.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

fn status_name(status: BusinessStatus) -> &'static str {
    match status {
        BusinessStatus::Active => "active",
        BusinessStatus::Suspended => "suspended",
    }
}

fn partners_table(state: &State) -> Markup {
    html! {
        table {
            thead { tr { th { "Partner" } th { "Role" } th { "Status" } th.num { "Posted" } th.num { "Pending debits" }
                th.num { "Pending credits" } th.num { "Net debit cap" } th.num { "Available" } th { "Cap used" }
                th.num { "In flight" } } }
            tbody {
                @for partner in state.partners() {
                    @let id = &partner.config.id;
                    @let limits = state.partner_limits(id);
                    @let usage = state.partner_usage(id);
                    tr data-partner=(id) {
                        td { (id) }
                        td { (format!("{:?}", partner.config.role).to_lowercase()) }
                        td class=(if partner.status == BusinessStatus::Active { "good" } else { "bad" }) { (status_name(partner.status)) }
                        @match state.position(id) {
                            Some(position) => {
                                @let cap = position.net_debit_cap.units() as f64;
                                @let spent = (position.pending_debits.units() - position.posted.units()).max(0) as f64;
                                @let used = if cap > 0.0 { (spent / cap).min(1.0) } else if spent > 0.0 { 1.0 } else { 0.0 };
                                td.num { (position.posted) }
                                td.num { (position.pending_debits) }
                                td.num { (position.pending_credits) }
                                td.num { (position.net_debit_cap) }
                                td.num { (position.available) }
                                td { meter min="0" max="1" high="0.8" value=(format!("{used:.3}")) {} " " (format!("{:.0} %", used * 100.0)) }
                            }
                            None => { td colspan="6" { "no position" } }
                        }
                        td.num { (usage.transfers_in_flight) " / " (limits.transfers_in_flight_max) }
                    }
                }
            }
        }
    }
}

fn corridors_table(state: &State) -> Markup {
    let now = state.clock();
    html! {
        table {
            thead { tr { th { "Corridor" } th { "Status" } th.num { "Min" } th.num { "Max" } th.num { "Daily cap" }
                th { "Used today" } th.num { "Spread" } th { "Refunds at" } } }
            tbody {
                @for corridor in state.corridors() {
                    @let used = metrics::daily_cap_used(corridor, now);
                    tr data-corridor=(corridor.id) {
                        td { (corridor.id) }
                        td class=(if corridor.status == BusinessStatus::Active { "good" } else { "bad" }) { (status_name(corridor.status)) }
                        td.num { (corridor.terms.min_amount()) }
                        td.num { (corridor.terms.max_amount()) }
                        td.num { (corridor.terms.daily_cap()) }
                        td { meter min="0" max="1" high="0.8" value=(format!("{:.3}", used.min(1.0))) {} " " (format!("{:.1} %", used * 100.0)) }
                        td.num { (corridor.terms.spread().get()) " bp" }
                        td { (state.refund_rate(&corridor.id)) }
                    }
                }
            }
        }
    }
}

fn regions_table(remotes: &[metrics::RemoteRegion]) -> Markup {
    html! {
        @if remotes.is_empty() { p.note { "No remote regions are configured." } }
        @else {
            table {
                thead { tr { th { "Region" } @for (kind, _) in remotes[0].outbox { th.num { "Outbox: " (kind.replace('_', " ")) } }
                    th.num { "Oldest prepare" } th { "Breaker" } th.num { "Calls in flight" } th.num { "Messages in flight" } } }
                tbody {
                    @for remote in remotes {
                        tr data-region=(remote.region) {
                            td { (remote.region) }
                            @for (_, count) in remote.outbox { td.num { (count) } }
                            td.num { (format!("{:.1} s", remote.oldest_prepare_age.as_secs_f64())) }
                            @match remote.open_for {
                                Some(open) => td.bad { "open for " (format!("{:.0} s", open.as_secs_f64())) },
                                None => td.good { "closed" },
                            }
                            td.num { (remote.calls) }
                            td.num { (remote.messages) }
                        }
                    }
                }
            }
        }
    }
}

fn windows_table(windows: &[paymesh_core::settlement::SettlementWindow]) -> Markup {
    html! {
        table {
            thead { tr { th.num { "Window" } th { "Opened" } th { "Closed" } th.num { "Positions" } th { "Regions sent to" } } }
            tbody {
                @for window in windows {
                    tr data-window=(window.number) {
                        td.num { (window.number) }
                        td { @if window.opened_at == Timestamp::EPOCH { "when the region began" } @else { (window.opened_at.to_rfc3339()) } }
                        td { @match window.closed_at { Some(at) => (at.to_rfc3339()), None => "open" } }
                        td.num { (window.positions.len()) }
                        td { (window.sent.keys().map(ToString::to_string).collect::<Vec<_>>().join(", ")) }
                    }
                }
            }
        }
    }
}

fn transfers_table(views: &[TransferView]) -> Markup {
    html! {
        @if views.is_empty() { p.note { "No transfers." } }
        @else {
            table {
                thead { tr { th { "Transfer" } th { "Partner" } th { "Idempotency key" } th { "Corridor" } th.num { "Debited" }
                    th.num { "Paid" } th.num { "Fee" } th { "State" } th { "Created" } th { "Updated" } } }
                tbody {
                    @for view in views {
                        tr data-transfer=(view.id) {
                            td { (view.id) }
                            td { (view.partner) }
                            td { (view.idempotency_key) }
                            td { (view.corridor) }
                            td.num { (view.priced.total_debit) }
                            td.num { (view.priced.destination) }
                            td.num { (view.priced.fee) }
                            td { (format!("{:?}", view.state).to_lowercase())
                                @if let Some(reason) = view.reason { " (" (format!("{reason:?}")) ")" } }
                            td { (view.created_at.to_rfc3339()) }
                            td { (view.updated_at.to_rfc3339()) }
                        }
                    }
                }
            }
        }
    }
}

/// The console's style sheet (served as `/console.css`, so the pages need
/// no inline style and the content security policy allows none).
const STYLE: &str = "\
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #1d2330; }
header { border-bottom: 1px solid #d6dbe3; margin-bottom: 1rem; }
h1 { font-size: 1.3rem; margin: 1rem 0 0.3rem; }
h2 { font-size: 1.05rem; margin: 1.4rem 0 0.5rem; }
nav a { color: #1b5fb8; }
.when, .note { color: #5b6473; }
table { border-collapse: collapse; margin-bottom: 0.5rem; }
th, td { border-bottom: 1px solid #e6e9ef; padding: 0.25rem 0.6rem; text-align: left; white-space: nowrap; }
th { background: #f3f5f8; font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.good { color: #1d7a3a; }
.bad { color: #b3261e; font-weight: 600; }
#charts { display: flex; flex-wrap: wrap; gap: 1.5rem; }
#charts h2 { width: 100%; }
figure.chart { margin: 0; }
figcaption { font-weight: 600; margin-bottom: 0.3rem; }
svg line.grid { stroke: #e6e9ef; }
svg text.axis { font-size: 10px; fill: #5b6473; }
svg polyline { fill: none; stroke-width: 1.5; }
svg .s1 { stroke: #1b5fb8; fill: #1b5fb8; }
svg polyline.s1, svg polyline.s2, svg polyline.s3 { fill: none; }
svg .s2 { stroke: #1d7a3a; fill: #1d7a3a; }
svg .s3 { stroke: #b3261e; fill: #b3261e; }
ul.legend { list-style: none; padding: 0; margin: 0.3rem 0 0; }
ul.legend li.s1::before, ul.legend li.s2::before, ul.legend li.s3::before { content: '\\25A0  '; }
ul.legend li.s1::before { color: #1b5fb8; }
ul.legend li.s2::before { color: #1d7a3a; }
ul.legend li.s3::before { color: #b3261e; }
meter { width: 6rem; }
";

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(buckets: &[(usize, u64)]) -> [u64; LATENCY_BUCKETS + 1] {
        let mut all = [0; LATENCY_BUCKETS + 1];
        for (i, n) in buckets {
            all[*i] = *n;
        }
        all
    }

    #[test]
    fn quantiles_fall_in_the_bucket_that_holds_their_rank() {
        assert_eq!(quantile(&[0; LATENCY_BUCKETS + 1], 0.5), None);
        // 100 calls within 0.5 ms: the median is halfway to the bound.
        let fast = counts(&[(0, 100)]);
        assert!((quantile(&fast, 0.5).unwrap() - 0.000_25).abs() < 1e-9);
        // 98 calls in (1 ms, 2 ms], 2 in (0.256 s, 0.512 s]: p50 is in the
        // first, p99 in the second.
        let tail = counts(&[(2, 98), (10, 2)]);
        let p50 = quantile(&tail, 0.5).unwrap();
        assert!(p50 > 0.001 && p50 <= 0.002, "{p50}");
        let p99 = quantile(&tail, 0.99).unwrap();
        assert!(p99 > 0.256 && p99 <= 0.512, "{p99}");
        // Past the last bound: the last bound.
        let slow = counts(&[(LATENCY_BUCKETS, 5)]);
        assert_eq!(quantile(&slow, 0.99), metrics::latency_bounds().last());
    }

    #[test]
    fn charts_show_rates_per_second_between_samples() {
        let mut calls = CallCounts::default();
        let mut samples = vec![Sample { at_ms: 0, created: 0, calls: calls.clone() }];
        calls.calls = 200;
        calls.errors = 20;
        calls.buckets[3] = 200;
        samples.push(Sample { at_ms: 10_000, created: 500, calls: calls.clone() });
        calls.calls = 400;
        calls.buckets[3] = 400;
        samples.push(Sample { at_ms: 20_000, created: 1_500, calls });
        let (throughput, latency) = charts(&samples);
        assert_eq!(throughput[0].points, vec![(10_000.0 / 60_000.0, 50.0), (0.0, 100.0)]);
        assert_eq!(throughput[1].points, vec![(10_000.0 / 60_000.0, 20.0), (0.0, 20.0)]);
        assert_eq!(throughput[2].points, vec![(10_000.0 / 60_000.0, 2.0), (0.0, 0.0)]);
        // Every call in (2 ms, 4 ms].
        assert!(latency[1].points.iter().all(|(_, ms)| *ms > 2.0 && *ms <= 4.0), "{:?}", latency[1].points);
        let svg = chart("throughput", "Throughput", "/s", &throughput).into_string();
        assert!(svg.contains("data-points=\"2\""), "{svg}");
        assert!(svg.contains("transfers created: <span class=\"value\">100 /s"), "{svg}");
        assert_eq!(svg.matches("<polyline").count(), 3);
        // One sample draws nothing yet, and says so.
        let (empty, _) = charts(&samples[..1]);
        assert!(chart("t", "T", "/s", &empty).into_string().contains("no data yet"));
    }

    #[test]
    fn search_texts_are_decoded_trimmed_and_bounded() {
        assert_eq!(search_text("q=us-west%3A42"), "us-west:42");
        assert_eq!(search_text("x=1&q=+order+7+"), "order 7");
        assert_eq!(search_text(""), "");
        assert_eq!(search_text(&format!("q={}", "k".repeat(1000))).len(), QUERY_CHARS_MAX);
    }

    #[test]
    fn what_a_partner_typed_is_escaped_not_rendered() {
        let page = message_page("Not found", "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;"), "{page}");
    }
}

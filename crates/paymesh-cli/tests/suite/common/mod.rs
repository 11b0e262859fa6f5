//! A region of real `paymesh` processes on loopback, for integration tests:
//! [`paymesh_harness::local::LocalRegion`] in a temporary directory, plus the
//! commands and helpers the tests share.

#![allow(dead_code, clippy::unwrap_used)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use paymesh_client::{ClientError, Credentials, PartnerClient};
use paymesh_harness::local::LocalRegion;
use paymesh_harness::webhook_receiver::ReceiverCa;
use paymesh_node::cluster_client::ClusterClient;
use paymesh_node::identity::Identity;
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;
use paymesh_proto::common::v1 as common;

/// The region every test uses.
pub const REGION: &str = "us-west";

/// The partners every region's certificates are issued for.
pub const PARTNERS: [&str; 3] = ["wallet-a", "wallet-b", "merchant-net"];

/// The operator the tests act as.
const OPERATOR: &str = "tests";

/// A region of node processes: [`LocalRegion`] in a temporary directory,
/// with the tests' certificates, and panics instead of errors. The directory
/// is kept (and its path printed) if the test fails.
pub struct Region {
    local: Option<LocalRegion>,
    dir: Option<tempfile::TempDir>,
}

impl Deref for Region {
    type Target = LocalRegion;

    fn deref(&self) -> &LocalRegion {
        self.local.as_ref().expect("the region is running")
    }
}

impl DerefMut for Region {
    fn deref_mut(&mut self) -> &mut LocalRegion {
        self.local.as_mut().expect("the region is running")
    }
}

impl Region {
    /// Configure `members` nodes (ids 1..=members) with `raft_settings`
    /// appended under `[raft]`, and start them. Not initialised yet.
    pub fn start(members: u64, raft_settings: &str) -> Region {
        let dir = tempfile::tempdir().unwrap();
        let partners = PARTNERS.iter().map(|p| Identity::partner(p).unwrap()).collect();
        let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
        let local = LocalRegion::start(dir.path(), REGION, exe, OPERATOR, partners, members, raft_settings).unwrap();
        Region { local: Some(local), dir: Some(dir) }
    }

    /// As [`Region::start`], without starting anything: certificates issued
    /// and addresses allocated, so a test can prepare the nodes' data
    /// directories before [`Region::launch`].
    pub fn plan(members: u64, raft_settings: &str) -> Region {
        let dir = tempfile::tempdir().unwrap();
        let partners = PARTNERS.iter().map(|p| Identity::partner(p).unwrap()).collect();
        let exe = Path::new(env!("CARGO_BIN_EXE_paymesh"));
        let local = LocalRegion::plan(dir.path(), REGION, exe, OPERATOR, partners, members, raft_settings).unwrap();
        Region { local: Some(local), dir: Some(dir) }
    }

    /// Write every planned node's configuration and start it.
    pub fn launch(&mut self) {
        LocalRegion::launch(self).unwrap();
    }

    /// The region's directory.
    pub fn path(&self) -> &Path {
        self.dir()
    }

    /// TLS credentials of a holder (`operator-tests`, `partner-wallet-a`, …).
    pub fn credentials(&self, stem: &str) -> Credentials {
        LocalRegion::credentials(self, stem).unwrap()
    }

    /// Allocate addresses and a certificate for node `id` (not yet started).
    pub fn configure(&mut self, id: u64) {
        LocalRegion::configure(self, id).unwrap();
    }

    /// Write node `id`'s configuration listing `peers`.
    pub fn write_config(&self, id: u64, peers: &[u64]) {
        LocalRegion::write_config(self, id, peers).unwrap();
    }

    /// Start node `id`'s process.
    pub fn spawn(&mut self, id: u64) {
        LocalRegion::spawn(self, id).unwrap();
    }

    /// SIGKILL node `id` and reap it.
    pub fn kill(&mut self, id: u64) {
        LocalRegion::kill(self, id).unwrap();
    }

    /// SIGTERM node `id` and wait (bounded) for it to exit; returns its status.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        LocalRegion::terminate(self, id).unwrap()
    }

    /// Delete node `id`'s data directory (the node must be stopped).
    pub fn wipe(&mut self, id: u64) {
        LocalRegion::wipe(self, id).unwrap();
    }

    /// A client of the running nodes, as the operator.
    pub fn client(&self) -> ClusterClient {
        LocalRegion::client(self).unwrap()
    }

    /// Initialise through node `id` and wait for a leader.
    pub async fn initialize(&self, id: u64) -> u64 {
        LocalRegion::initialize(self, id, Duration::from_secs(20)).await.unwrap()
    }

    /// Wait until a running node reports itself leader; returns its id.
    pub async fn wait_leader(&self, timeout: Duration) -> u64 {
        LocalRegion::wait_leader(self, timeout).await.unwrap()
    }

    /// Wait until every running node has applied the same index with the same
    /// state digest; returns the statuses.
    pub async fn wait_converged(&self, timeout: Duration) -> Vec<wire::GetNodeStatusResponse> {
        LocalRegion::wait_converged(self, timeout).await.unwrap()
    }

    /// A partner's client, presenting the partner's certificate.
    pub fn partner(&self, id: &str) -> PartnerClient {
        LocalRegion::partner(self, id).unwrap()
    }

    /// Run one admin call through whichever node leads.
    pub async fn admin<T, F, Fut>(&self, call: F) -> T
    where
        F: Fn(AdminServiceClient<paymesh_client::NodeChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        LocalRegion::admin(self, call).await.unwrap()
    }

    /// Configure partner `id` of this region, settling in USD, with `role`
    /// and a net debit cap of `cap` dollars; panics unless it is stored.
    pub async fn upsert_partner(&self, id: &str, role: wire::PartnerRole, cap: &str) {
        let request = wire::UpsertPartnerRequest {
            partner_id: id.into(),
            home_region: REGION.into(),
            role: role as i32,
            settlement_currency: "USD".into(),
            net_debit_cap: Some(money(cap, "USD")),
        };
        let response = self
            .admin(|mut c| {
                let r = request.clone();
                async move { c.upsert_partner(r).await }
            })
            .await;
        assert_eq!(response.reject_code, 0, "{id}: {response:?}");
    }

    /// Register `partner`'s webhook at `url` signed with `secret`; panics
    /// unless it is stored.
    pub async fn set_webhook(&self, partner: &str, url: &str, secret: &str) -> wire::Webhook {
        let operator = self.sdk(&self.operator_stem()).unwrap();
        paymesh_harness::webhooks::set(&operator, partner, url, secret).await.unwrap()
    }

    /// Credit partner `id` with `amount` dollars under `reference`.
    pub async fn fund(&self, id: &str, amount: &str, reference: &str) {
        let request = wire::TopUpPositionRequest {
            partner_id: id.into(),
            amount: Some(money(amount, "USD")),
            reference: reference.into(),
        };
        let response = self
            .admin(|mut c| {
                let r = request.clone();
                async move { c.top_up_position(r).await }
            })
            .await;
        assert_eq!(response.reject_code, 0, "{id}: {response:?}");
    }

    /// The partner API tests' world: payers `wallet-a` and `wallet-b` (USD,
    /// net debit cap `cap`, funded with 1,000.00 each), the payee
    /// `merchant-net`, and [`Self::domestic_usd`] with `fee`.
    pub async fn two_payers_and_a_merchant(&self, cap: &str, fee: wire::FeeSchedule) {
        for (id, role) in [
            ("wallet-a", wire::PartnerRole::Payer),
            ("wallet-b", wire::PartnerRole::Payer),
            ("merchant-net", wire::PartnerRole::Payee),
        ] {
            self.upsert_partner(id, role, cap).await;
        }
        for id in ["wallet-a", "wallet-b"] {
            self.fund(id, "1000", &format!("fund-{id}")).await;
        }
        self.domestic_usd(fee).await;
    }

    /// The domestic USD corridor of the region (0.01 to 500.00 a transfer,
    /// 100,000.00 a day) with `fee`, and the route of `pay://merchant/` codes
    /// to the payee `merchant-net`.
    pub async fn domestic_usd(&self, fee: wire::FeeSchedule) {
        let corridor = common::CorridorId {
            source_currency: "USD".into(),
            source_region: REGION.into(),
            destination_currency: "USD".into(),
            destination_region: REGION.into(),
        };
        let request = wire::UpsertCorridorRequest {
            corridor: Some(corridor),
            spread_bps: 0,
            fee: Some(fee),
            min_amount: Some(money("0.01", "USD")),
            max_amount: Some(money("500", "USD")),
            daily_cap: Some(money("100000", "USD")),
        };
        let response = self
            .admin(|mut c| {
                let r = request.clone();
                async move { c.upsert_corridor(r).await }
            })
            .await;
        assert_eq!(response.reject_code, 0, "{response:?}");
        let request = wire::UpsertPayeeRouteRequest {
            qr_prefix: "pay://merchant/".into(),
            payee_partner_id: "merchant-net".into(),
            region: REGION.into(),
            currency: "USD".into(),
        };
        let response = self
            .admin(|mut c| {
                let r = request.clone();
                async move { c.upsert_payee_route(r).await }
            })
            .await;
        assert_eq!(response.reject_code, 0, "{response:?}");
    }

    /// [`LocalRegion::cli`], failing the test if the command cannot run
    /// or does not finish.
    pub fn cli(&self, stem: &str, args: &[&str]) -> (i32, String, String) {
        (**self).cli(stem, args).unwrap()
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Stop the processes before the directory goes.
        drop(self.local.take());
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                eprintln!("the failed region's logs and data are kept in {}", dir.keep().display());
            }
        }
    }
}

/// The repository's root: the scripts, deploy files and docs some tests
/// run or read.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The partner the writing tests credit.
pub const WRITER_PARTNER: &str = "paypal-us";

/// Writes a test makes through the region's admin API, as the operator: the
/// partner, then top-ups with unique references. Each write is built into a
/// command by the region's own write path; a retried top-up is safe because
/// its reference makes it idempotent.
pub struct Writer {
    sdk: paymesh_client::Region,
}

impl Writer {
    /// A writer that may use every running node of `region`.
    pub fn new(region: &Region) -> Writer {
        Writer { sdk: region.sdk(&region.operator_stem()).unwrap() }
    }

    /// A writer that uses only the nodes `ids`.
    pub fn through(region: &Region, ids: &[u64]) -> Writer {
        let addrs = ids.iter().map(|id| region.nodes[id].api_addr.clone()).collect();
        let policy = paymesh_client::RetryPolicy { attempts: 200, deadline: Duration::from_secs(60) };
        Writer { sdk: paymesh_client::Region::with_policy(addrs, region.credentials(&region.operator_stem()), policy) }
    }

    /// Run one admin call on whichever node leads.
    async fn admin<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(AdminServiceClient<paymesh_client::NodeChannel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.sdk
            .call(None, |channel| {
                let fut = call(AdminServiceClient::new(channel));
                async move { fut.await.map(|r| r.into_inner()) }
            })
            .await
    }

    /// Configure the payer partner the top-ups credit.
    pub async fn partner(&self) {
        let request = wire::UpsertPartnerRequest {
            partner_id: WRITER_PARTNER.into(),
            home_region: REGION.into(),
            role: wire::PartnerRole::Payer as i32,
            settlement_currency: "USD".into(),
            net_debit_cap: Some(money("0", "USD")),
        };
        let response = self
            .admin(|mut c| {
                let request = request.clone();
                async move { c.upsert_partner(request).await }
            })
            .await
            .unwrap();
        assert_eq!(response.reject_code, 0, "{response:?}");
    }

    /// A top-up of `cents` with reference `reference`, acknowledged once the
    /// region applied it.
    pub async fn top_up(&self, reference: &str, cents: u64) -> Result<(), ClientError> {
        let request = wire::TopUpPositionRequest {
            partner_id: WRITER_PARTNER.into(),
            amount: Some(money(&format!("{}.{:02}", cents / 100, cents % 100), "USD")),
            reference: reference.into(),
        };
        let response = self
            .admin(|mut c| {
                let request = request.clone();
                async move { c.top_up_position(request).await }
            })
            .await?;
        assert_eq!(response.reject_code, 0, "top-up {reference}: {response:?}");
        Ok(())
    }

    /// Top-ups of one cent with each of `references`, all at once (the
    /// leader's proposer groups them into entries); each one's answer.
    pub async fn top_ups(&self, references: &[String]) -> Vec<Result<(), ClientError>> {
        futures::future::join_all(references.iter().map(|r| self.top_up(r, 1))).await
    }
}

/// Check that every reference in `acknowledged` is applied, by sending its
/// top-up again with a different amount: an applied top-up answers with an
/// idempotency conflict (ALREADY_EXISTS); a lost one would be credited now
/// (and fail the test).
pub async fn assert_all_present(writer: &Writer, acknowledged: &[String]) {
    for chunk in acknowledged.chunks(200) {
        let probes = chunk.iter().map(|reference| async move { (reference, writer.top_up(reference, 2).await) });
        for (reference, answer) in futures::future::join_all(probes).await {
            match answer {
                Err(ClientError::Refused(status)) if status.code() == tonic::Code::AlreadyExists => {}
                other => panic!("acknowledged top-up {reference} is missing from the region: {other:?}"),
            }
        }
    }
}

/// The data directory's path, for tests that look inside.
pub fn data_dir(region: &Region, id: u64) -> &Path {
    &region.nodes[&id].data_dir
}

/// An amount on the wire.
/// A 3-node region whose nodes trust `ca`'s receivers and deliver with
/// `settings` (lines of `[webhooks]`), with the partner API tests' world.
pub async fn region_with_webhooks(settings: &str) -> (Region, ReceiverCa) {
    let mut region = Region::plan(3, "");
    let ca = ReceiverCa::new(region.path()).unwrap();
    let section = ca.node_config(settings);
    for node in region.nodes.values_mut() {
        node.extra_config = section.clone();
    }
    region.launch();
    region.initialize(1).await;
    region.two_payers_and_a_merchant("100", ten_cents()).await;
    (region, ca)
}

/// A fee of 0.10 USD a transfer, whatever its amount.
pub fn ten_cents() -> wire::FeeSchedule {
    wire::FeeSchedule {
        fixed: Some(money("0.10", "USD")),
        rate_bps: 0,
        min: Some(money("0", "USD")),
        max: Some(money("5", "USD")),
    }
}

pub fn money(amount: &str, currency: &str) -> common::Money {
    common::Money { amount: amount.into(), currency: currency.into() }
}

/// Payments each wallet of [`pay_until`] makes at most (its loop stops by
/// itself).
pub const PAYMENTS_MAX: usize = 3_000;

/// A wallet of `region` paying WeChat merchants one payment after another
/// (their keys numbered from `first`) until `stop`, counting each answered
/// payment in `acknowledged`; the ids
/// of the payments it was answered with. A refused call (a region away,
/// draining or reconciling) is followed by a short pause.
pub fn pay_until(
    client: PartnerClient,
    region: &'static str,
    first: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> tokio::task::JoinHandle<Vec<String>> {
    let tally = Tally { acknowledged, ..Tally::default() };
    pay_until_counting(client, region, first, stop, tally)
}

/// What [`pay_until_counting`]'s wallets did, shared.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Payments answered.
    pub acknowledged: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Calls that failed after the SDK's retries (each printed).
    pub failed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Retryable answers the SDK met and retried, counted when the wallet
    /// stops ([`paymesh_client::Region::retries`]).
    pub retried: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// [`pay_until`], counting in `tally` what failed and what the SDK retried
/// as well.
pub fn pay_until_counting(
    client: PartnerClient,
    region: &'static str,
    first: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: Tally,
) -> tokio::task::JoinHandle<Vec<String>> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut ids = Vec::new();
        for n in first..first + PAYMENTS_MAX {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let [name, account, reference] = paymesh_harness::locality::payer_fields(region, 0, n as u64);
            let request = paymesh_proto::partner::v1::CreatePaymentRequest {
                idempotency_key: format!("{region}-{n}"),
                qr_payload: format!("wxp://test/{region}-{n}"),
                amount: Some(paymesh_proto::partner::v1::create_payment_request::Amount::DestinationAmount(money(
                    "7.10", "CNY",
                ))),
                max_total_debit: None,
                payer: Some(paymesh_proto::partner::v1::PayerDetails { name, account, reference }),
            };
            match client.create_payment(request).await {
                Ok(answer) => {
                    ids.push(answer.transfer.unwrap().transfer_id);
                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("{region} payment {n} failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
            }
        }
        tally.retried.fetch_add(client.region().retries(), Ordering::Relaxed);
        ids
    })
}

/// Wait until `count` reaches `at_least`, failing after `within`.
pub async fn wait_for(count: &std::sync::atomic::AtomicUsize, at_least: usize, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while count.load(std::sync::atomic::Ordering::Relaxed) < at_least {
        let now = count.load(std::sync::atomic::Ordering::Relaxed);
        assert!(std::time::Instant::now() < deadline, "{now} payments, not {at_least}, within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Wait (within `within`) until every transfer of `mesh` is final where it
/// is held, observe every region, and fail unless every checker passes
/// over what `wallets` paid `merchants`.
pub async fn assert_every_checker_passes(
    mesh: &paymesh_harness::mesh::LocalMesh,
    wallets: &[paymesh_harness::world::Wallet],
    merchants: &[paymesh_harness::world::Merchant],
    within: Duration,
) {
    use paymesh_harness::{check, observe};
    let observed = observe::live_mesh(mesh, observe::Partners { wallets, merchants }, within, "process").await.unwrap();
    let verdict = check::check_with(&check::of_observation(), &observed);
    assert!(verdict.passed(), "{}", verdict.failures(5));
}

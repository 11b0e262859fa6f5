//! `paymesh.interregion.v1.InterRegionService`: the payee region's side of
//! the two-phase protocol, and the conversions both sides use.
//!
//! A batch from another region arrives on the inter-region listener, whose
//! TLS trusts only the remote regions' CAs. The caller must be a node of a
//! configured remote region, its certificate issued by that region's own CA
//! (so one region's CA cannot speak for another), and the batch's
//! `from_region` must be the caller's region. Each item becomes one command
//! (`Prepare` or `Decide`) through the leader's group-commit proposer, so a
//! batch of a thousand items costs a handful of Raft entries; the state
//! machine makes every item idempotent by (transfer id, phase).
//!
//! A follower forwards the batch, once, to its leader's API listener, where
//! the same service accepts only this region's own nodes (the follower has
//! authenticated the remote caller already).

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use openraft::ServerState;
use paymesh_client::{Credentials, Region, RetryPolicy};
use paymesh_core::command::{
    CancelRequest, CommandBody, Decision, PrepareMessage, PrepareReply, Preparing, RefundPrepare,
};
use paymesh_core::corridor::CorridorId;
use paymesh_core::currency::Currency;
use paymesh_core::id::{MerchantId, PayerToken, RegionId, TransferId};
use paymesh_core::money::Money;
use paymesh_core::{Outcome, RejectCode};
use paymesh_proto::interregion::v1 as wire;
use paymesh_proto::interregion::v1::inter_region_service_client::InterRegionServiceClient;
use paymesh_proto::interregion::v1::inter_region_service_server::InterRegionService;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use x509_parser::prelude::FromDer;

use crate::convert;
use crate::engine::receiver::{self, Contradiction, Inbound, Reply};
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::outbox::Links;
use crate::telemetry::wire_transfer;

/// The most items in one batch, either way.
pub const BATCH_ITEMS_MAX: usize = 1_000;

/// The largest inter-region message, in bytes (a thousand items fit easily).
pub const INTERREGION_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// How long a forwarded batch may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Metadata marking a batch a follower forwarded to its leader.
const FORWARDED: &str = "paymesh-forwarded";

/// Which listener a server answers on.
#[derive(Clone, Debug)]
pub enum Door {
    /// The inter-region listener: callers are other regions' nodes, each
    /// checked against its own region's CA keys (the public keys of the CA
    /// certificates in that region's `ca_cert` file as last read, one of
    /// which must have signed the caller's certificate; none in plaintext).
    Remote(Arc<Links>),
    /// The API listener: callers are this region's followers forwarding.
    Forwarded,
}

/// Serves the inter-region protocol for one node.
#[derive(Clone, Debug)]
pub struct InterRegionServer {
    gateway: Gateway,
    door: Door,
    leaders: Arc<Region>,
    /// Callers name themselves in metadata (development only).
    plaintext: bool,
}

impl InterRegionServer {
    /// The service of the node behind `gateway`, on `door`, dialing its
    /// leader as `dialing` says; `plaintext` when the node runs without TLS
    /// (development).
    pub fn new(
        gateway: Gateway,
        door: Door,
        dialing: watch::Receiver<Credentials>,
        plaintext: bool,
    ) -> InterRegionServer {
        let leaders = Region::live(Vec::new(), dialing, RetryPolicy::default()).with_call_timeout(FORWARD_TIMEOUT);
        InterRegionServer { gateway, door, leaders: Arc::new(leaders), plaintext }
    }

    /// The calling region, checked against the batch's `from_region`, and
    /// the protocol the batch says it runs noted on its link.
    fn caller_running<T>(&self, request: &Request<T>, from_region: &str, protocol: u32) -> Result<RegionId, Status> {
        let from = self.caller(request, from_region)?;
        if let Door::Remote(links) = &self.door {
            if let Some(link) = links.get(&from) {
                link.note_protocol(protocol);
            }
        }
        Ok(from)
    }

    /// The calling region, checked against the batch's `from_region`.
    fn caller<T>(&self, request: &Request<T>, from_region: &str) -> Result<RegionId, Status> {
        let from = convert::region_id("from_region", from_region)?;
        let plaintext = self.plaintext;
        match (&self.door, self.gateway.auth.identify(request)?) {
            (Door::Remote(links), Identity::Node { region, .. }) => {
                let Some(link) = links.get(&region) else {
                    return Err(Status::permission_denied(format!(
                        "region {region} is not among this region's remote regions"
                    )));
                };
                if !plaintext {
                    let ca = link.ca();
                    check_issuer(request, ca.as_ref().map_or(&[][..], |ca| &ca.keys), &region)?;
                }
                if region != from {
                    return Err(Status::permission_denied(format!(
                        "from_region {from} does not match the caller's region {region}"
                    )));
                }
                Ok(from)
            }
            (Door::Forwarded, Identity::Node { region, node_id }) if region == self.gateway.region => {
                if request.metadata().get(FORWARDED).is_none() {
                    return Err(Status::permission_denied("only forwarded batches are accepted here"));
                }
                self.gateway.members().admit(node_id)?;
                Ok(from)
            }
            (_, other) => Err(Status::permission_denied(format!("{other} may not call the inter-region service"))),
        }
    }

    fn leading(&self) -> bool {
        self.gateway.raft.metrics().borrow().state == ServerState::Leader
    }

    /// A client of the leader's API listener, for a follower on the remote
    /// door; otherwise UNAVAILABLE with the leader hint.
    fn leader_client(&self) -> Result<InterRegionServiceClient<paymesh_client::NodeChannel>, Status> {
        if matches!(self.door, Door::Forwarded) {
            return Err(self.gateway.not_leader());
        }
        let metrics = self.gateway.raft.metrics().borrow().clone();
        let leader = metrics
            .current_leader
            .and_then(|id| metrics.membership_config.membership().get_node(&id).cloned())
            .ok_or_else(|| Status::unavailable("no leader is known in this region; retry shortly"))?;
        let client = InterRegionServiceClient::new(self.leaders.channel(&leader.api_addr)?)
            .max_decoding_message_size(INTERREGION_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(INTERREGION_MESSAGE_BYTES_MAX);
        Ok(client)
    }

    /// A forward to the leader, ended when this region's leader changes
    /// ([`until_replaced`]).
    async fn until_leader_changes<T>(
        &self,
        forwarding: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        until_replaced(self.gateway.raft.metrics(), |m| m.current_leader, forwarding).await
    }

    async fn propose(&self, body: CommandBody) -> Result<Outcome, Status> {
        self.gateway.operate(body).await
    }
}

/// `forwarding` (a batch on its way to the leader this node knows, whose
/// id `leader_of` reads from `metrics`) unless the region's leader changes
/// first: then UNAVAILABLE at once, and the caller (another region's
/// outbox, idempotent by transfer and phase) retries, on whichever node
/// leads by then. A leader that died leaves its followers forwarding to it
/// until they elect another (the forward waited for a connection or the
/// keepalive to fail: seconds past the election, in which the calling
/// region kept its breaker open and refused payments here).
async fn until_replaced<M, L, T>(
    mut metrics: watch::Receiver<M>,
    leader_of: impl Fn(&M) -> L,
    forwarding: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status>
where
    L: PartialEq,
{
    let known = leader_of(&metrics.borrow_and_update());
    let replaced = async move {
        // A closed channel (the node stopping) is not a new leader.
        while metrics.changed().await.is_ok() {
            if leader_of(&metrics.borrow_and_update()) != known {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        result = forwarding => result,
        () = replaced => Err(Status::unavailable("the leader this batch was forwarded to was replaced; retry shortly")),
    }
}

/// The public key of a CA certificate: its DER SubjectPublicKeyInfo.
pub type CaKey = Vec<u8>;

/// The caller's certificate must have been signed by one of its region's CA
/// keys. The issuer's name proves nothing: another region's CA may carry the
/// same subject, and the TLS handshake on this listener accepts every remote
/// region's CA, so a region is pinned by its CAs' keys.
fn check_issuer<T>(request: &Request<T>, ca_keys: &[CaKey], region: &RegionId) -> Result<(), Status> {
    let certs = request.peer_certs().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    let leaf = certs.first().ok_or_else(|| Status::unauthenticated("no client certificate"))?;
    match signed_by_one_of(leaf, ca_keys) {
        Ok(true) => Ok(()),
        Ok(false) => Err(Status::permission_denied(format!(
            "the caller's certificate names region {region} but no key of that region's CA signed it"
        ))),
        Err(e) => Err(Status::unauthenticated(format!("client certificate: {e}"))),
    }
}

/// Whether one of `ca_keys` signed the certificate `leaf_der`.
pub fn signed_by_one_of(leaf_der: &[u8], ca_keys: &[CaKey]) -> Result<bool, String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).map_err(|e| e.to_string())?;
    Ok(ca_keys.iter().any(|key| {
        x509_parser::x509::SubjectPublicKeyInfo::from_der(key)
            .is_ok_and(|(_, spki)| leaf.verify_signature(Some(&spki)).is_ok())
    }))
}

/// The public keys of every CA certificate in a CA file's PEM, for
/// [`Door::Remote`]: several during a CA rollover, when the file holds the
/// old and the new CA.
pub fn ca_keys(pem: &[u8]) -> Result<Vec<CaKey>, String> {
    let mut keys = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| e.to_string())?;
        if block.label == "CERTIFICATE" {
            let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).map_err(|e| e.to_string())?;
            keys.push(cert.public_key().raw.to_vec());
        }
    }
    if keys.is_empty() {
        return Err("no certificate".into());
    }
    Ok(keys)
}

/// `request`'s batch, marked for the leader as forwarded by this node.
fn forwarded<T>(request: Request<T>) -> Request<T> {
    let mut forwarded = Request::new(request.into_inner());
    forwarded.metadata_mut().insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    forwarded
}

/// A Prepare item as the core's message (a payment's, or a refund's when
/// `refund_of` is set); a malformed item is a protocol violation, and one
/// from a region other than the caller a region mismatch.
pub fn prepare_in(item: &wire::PrepareItem, from: &RegionId) -> Result<Preparing, RejectCode> {
    fn violation<E>(_: E) -> RejectCode {
        RejectCode::ProtocolViolation
    }
    let transfer = TransferId::parse(&item.transfer_id).map_err(violation)?;
    let corridor = convert::corridor_id("corridor", item.corridor.as_ref()).map_err(violation)?;
    let source_region = RegionId::new(item.source_region.as_str()).map_err(violation)?;
    if &source_region != from || transfer.origin() != from || corridor.source_region != source_region {
        return Err(RejectCode::RegionMismatch);
    }
    let source = convert::money("source_amount", item.source_amount.as_ref()).map_err(violation)?;
    let destination = convert::money("destination_amount", item.destination_amount.as_ref()).map_err(violation)?;
    if source.is_zero() || destination.is_zero() {
        return Err(RejectCode::ProtocolViolation);
    }
    let payer_token = PayerToken::parse(&item.payer_token).map_err(violation)?;
    let deadline = convert::timestamp("deadline_unix_ms", item.deadline_unix_ms).map_err(violation)?;
    if !item.cancel_of.is_empty() {
        return Ok(Preparing::Cancel(CancelRequest {
            cancel: transfer,
            original: TransferId::parse(&item.cancel_of).map_err(violation)?,
            corridor,
            source,
            destination,
            payer_token,
            requested_at: deadline,
        }));
    }
    if !item.refund_of.is_empty() {
        if source.currency() != corridor.source_currency || destination.currency() != corridor.destination_currency {
            return Err(RejectCode::CurrencyMismatch);
        }
        return Ok(Preparing::Refund(RefundPrepare {
            refund: transfer,
            original: TransferId::parse(&item.refund_of).map_err(violation)?,
            debited: source,
            credited: destination,
            requested_by: convert::partner_id("payee_partner_id", &item.payee_partner_id).map_err(violation)?,
            payer_token,
            deadline,
        }));
    }
    Ok(Preparing::Transfer(PrepareMessage {
        transfer,
        corridor,
        source,
        destination,
        rate: convert::rate("rate", &item.rate).map_err(violation)?,
        payee: convert::partner_id("payee_partner_id", &item.payee_partner_id).map_err(violation)?,
        merchant: MerchantId::new(item.merchant_id.as_str()).map_err(violation)?,
        payer_token,
        deadline,
    }))
}

/// The wire form of a Prepare, as the coordinator sends it to `to`,
/// carrying the trace context `traceparent` (or empty).
pub fn prepare_out(preparing: &Preparing, to: &RegionId, traceparent: String) -> wire::PrepareItem {
    match preparing {
        Preparing::Transfer(message) => wire::PrepareItem {
            transfer_id: message.transfer.to_string(),
            corridor: Some(convert::corridor_id_out(&message.corridor)),
            source_region: message.corridor.source_region.to_string(),
            source_amount: Some(convert::money_out(&message.source)),
            destination_amount: Some(convert::money_out(&message.destination)),
            rate: message.rate.to_string(),
            payee_partner_id: message.payee.to_string(),
            merchant_id: message.merchant.to_string(),
            payer_token: message.payer_token.to_string(),
            deadline_unix_ms: convert::unix_ms(message.deadline),
            traceparent,
            refund_of: String::new(),
            cancel_of: String::new(),
        },
        Preparing::Refund(message) => {
            let corridor = CorridorId {
                source_region: message.refund.origin().clone(),
                source_currency: message.debited.currency(),
                destination_region: to.clone(),
                destination_currency: message.credited.currency(),
            };
            wire::PrepareItem {
                transfer_id: message.refund.to_string(),
                corridor: Some(convert::corridor_id_out(&corridor)),
                source_region: corridor.source_region.to_string(),
                source_amount: Some(convert::money_out(&message.debited)),
                destination_amount: Some(convert::money_out(&message.credited)),
                rate: String::new(),
                payee_partner_id: message.requested_by.to_string(),
                merchant_id: String::new(),
                payer_token: message.payer_token.to_string(),
                deadline_unix_ms: convert::unix_ms(message.deadline),
                traceparent,
                refund_of: message.original.to_string(),
                cancel_of: String::new(),
            }
        }
        Preparing::Cancel(message) => wire::PrepareItem {
            transfer_id: message.cancel.to_string(),
            corridor: Some(convert::corridor_id_out(&message.corridor)),
            source_region: message.corridor.source_region.to_string(),
            source_amount: Some(convert::money_out(&message.source)),
            destination_amount: Some(convert::money_out(&message.destination)),
            rate: String::new(),
            payee_partner_id: String::new(),
            merchant_id: String::new(),
            payer_token: message.payer_token.to_string(),
            deadline_unix_ms: convert::unix_ms(message.requested_at),
            traceparent,
            refund_of: String::new(),
            cancel_of: message.original.to_string(),
        },
    }
}

/// The core's reply from the wire; `None` for a reply that must be retried.
pub fn reply_in(reply: &wire::PrepareReply) -> Option<PrepareReply> {
    match wire::PrepareResult::try_from(reply.result).ok()? {
        wire::PrepareResult::Prepared => Some(match &reply.refund_credit {
            // A credit that does not parse is still an answer: the
            // coordinator aborts on an unsound one rather than retry.
            Some(credit) => PrepareReply::PreparedCredit(
                convert::money("refund_credit", Some(credit)).unwrap_or_else(|_| Money::zero(Currency::USD)),
            ),
            None => PrepareReply::Prepared,
        }),
        wire::PrepareResult::Rejected => Some(PrepareReply::Rejected(
            convert::reject_code_in(reply.reject_code).unwrap_or(RejectCode::ProtocolViolation),
        )),
        wire::PrepareResult::Unspecified => None,
    }
}

/// The wire form of a participant's answer to one prepare.
pub fn reply_out(transfer_id: &str, reply: PrepareReply) -> wire::PrepareReply {
    let (result, code, credit) = match reply {
        PrepareReply::Prepared => (wire::PrepareResult::Prepared, None, None),
        PrepareReply::PreparedCredit(credit) => (wire::PrepareResult::Prepared, None, Some(credit)),
        PrepareReply::Rejected(code) => (wire::PrepareResult::Rejected, Some(code), None),
    };
    wire::PrepareReply {
        transfer_id: transfer_id.to_owned(),
        result: result as i32,
        reject_code: convert::reject_code_opt(code),
        refund_credit: credit.as_ref().map(convert::money_out),
    }
}

/// The wire form of a decision.
pub fn decision_out(decision: Decision) -> i32 {
    match decision {
        Decision::Commit => wire::Decision::Commit as i32,
        Decision::Abort => wire::Decision::Abort as i32,
    }
}

/// A received decision, if well formed and sent by the transfer's origin.
pub fn decision_in(item: &wire::DecisionItem, from: &RegionId) -> Option<(TransferId, Decision)> {
    let transfer = TransferId::parse(&item.transfer_id).ok()?;
    if transfer.origin() != from {
        // A region decides only the transfers it coordinates.
        return None;
    }
    let decision = match wire::Decision::try_from(item.decision).ok()? {
        wire::Decision::Commit => Decision::Commit,
        wire::Decision::Abort => Decision::Abort,
        wire::Decision::Unspecified => return None,
    };
    Some((transfer, decision))
}

/// The wire form of one decision's acknowledgement.
pub fn ack(transfer_id: &str, result: wire::AckResult) -> wire::Ack {
    wire::Ack { transfer_id: transfer_id.to_owned(), result: result as i32 }
}

/// The span of one received Prepare, a child of the sender's trace. The
/// transfer id is the wire's, not yet checked: it is recorded parsed, or
/// bounded and escaped ([`wire_transfer`]).
fn prepare_span(item: &wire::PrepareItem, from: &RegionId) -> tracing::Span {
    let span = tracing::info_span!("prepare.apply", transfer = %wire_transfer(&item.transfer_id), from = %from);
    crate::telemetry::continue_from(&span, &item.traceparent);
    span
}

/// The span of one received decision, a child of the sender's trace.
fn decide_span(item: &wire::DecisionItem, from: &RegionId) -> tracing::Span {
    let span = tracing::info_span!("decide.apply", transfer = %wire_transfer(&item.transfer_id), from = %from);
    crate::telemetry::continue_from(&span, &item.traceparent);
    span
}

#[tonic::async_trait]
impl InterRegionService for InterRegionServer {
    async fn prepare(&self, request: Request<wire::PrepareBatch>) -> Result<Response<wire::PrepareReplyBatch>, Status> {
        let from = self.caller_running(&request, &request.get_ref().from_region, request.get_ref().protocol)?;
        receiver::admit(request.get_ref().items.len()).map_err(Status::invalid_argument)?;
        if !self.leading() {
            let mut leader = self.leader_client()?;
            let forwarding = leader.prepare(forwarded(request));
            return self.until_leader_changes(forwarding).await;
        }
        self.refuse_while_reconciling(&from)?;
        let batch = request.into_inner();
        let (inbound, proposals) = Inbound::prepares(&batch, &from);
        let span = |item: usize| prepare_span(&batch.items[item], &from);
        match self.answer(inbound, proposals, span, &from).await? {
            Reply::Prepares(replies) => Ok(Response::new(replies)),
            Reply::Acks(_) => Err(Status::internal("acks answering prepares")),
        }
    }

    async fn decide(&self, request: Request<wire::DecisionBatch>) -> Result<Response<wire::AckBatch>, Status> {
        let from = self.caller_running(&request, &request.get_ref().from_region, request.get_ref().protocol)?;
        receiver::admit(request.get_ref().items.len()).map_err(Status::invalid_argument)?;
        if !self.leading() {
            let mut leader = self.leader_client()?;
            let forwarding = leader.decide(forwarded(request));
            return self.until_leader_changes(forwarding).await;
        }
        self.refuse_while_reconciling(&from)?;
        let batch = request.into_inner();
        let (inbound, proposals) = Inbound::decisions(&batch, &from);
        let span = |item: usize| decide_span(&batch.items[item], &from);
        match self.answer(inbound, proposals, span, &from).await? {
            Reply::Acks(acks) => Ok(Response::new(acks)),
            Reply::Prepares(_) => Err(Status::internal("prepare replies answering decisions")),
        }
    }

    async fn reconcile(
        &self,
        request: Request<wire::ReconcileRequest>,
    ) -> Result<Response<wire::ReconcileReply>, Status> {
        let from = self.caller_running(&request, &request.get_ref().from_region, request.get_ref().protocol)?;
        if !self.leading() {
            let mut leader = self.leader_client()?;
            let forwarding = leader.reconcile(forwarded(request));
            return self.until_leader_changes(forwarding).await;
        }
        let applied = self.gateway.state_machine.applied();
        let reply =
            crate::reconcile::answer(&applied.state, self.gateway.state_machine.history(), request.get_ref(), &from)?;
        Ok(Response::new(reply))
    }
}

impl InterRegionServer {
    /// A restored region takes no protocol message from a region it still
    /// reconciles with: the comparison needs both records to stand still.
    fn refuse_while_reconciling(&self, from: &RegionId) -> Result<(), Status> {
        if self.gateway.state_machine.applied().state.reconciling_with(from) {
            return Err(Status::unavailable(format!(
                "this region was restored from a backup and is reconciling with {from}; retry shortly"
            )));
        }
        Ok(())
    }

    /// Propose a batch's commands (each in its item's span), give the
    /// receiver each outcome, and return its answer. A proposal that fails
    /// (leadership lost) fails the batch, and so does an outcome the
    /// protocol does not produce.
    async fn answer(
        &self,
        mut inbound: Inbound,
        proposals: Vec<receiver::Proposal>,
        span: impl Fn(usize) -> tracing::Span,
        from: &RegionId,
    ) -> Result<Reply, Status> {
        let outcomes = join_all(proposals.into_iter().map(|proposal| {
            let item = proposal.item;
            tracing::Instrument::instrument(async move { (item, self.propose(proposal.body).await) }, span(item))
        }))
        .await;
        for (item, outcome) in outcomes {
            let contradiction = inbound.answered(item, outcome?).map_err(|e| Status::internal(e.to_string()))?;
            if let Some(Contradiction { transfer, decision, code }) = contradiction {
                tracing::error!(%transfer, from = %from, ?decision, ?code,
                    "a decision contradicts this region's records; operators must investigate");
            }
        }
        Ok(inbound.reply(&self.gateway.region, self.gateway.state_machine.protocol().number()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Metadata, Subscriber};

    use super::*;
    use crate::tls::certs::{generate, CertSpec};

    /// A forward waiting on a leader ends as soon as another is elected
    /// (or the old one is voted out), not when its connection gives up;
    /// one that answers first is the answer; other changes of the
    /// metrics leave it waiting.
    #[tokio::test]
    async fn a_forward_to_a_replaced_leader_ends_when_the_leader_changes() {
        let (metrics, watching) = watch::channel((Some(1u64), 0u64));
        let leader = |m: &(Option<u64>, u64)| m.0;
        let stuck = until_replaced(watching.clone(), leader, std::future::pending::<Result<(), Status>>());
        let changes = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            metrics.send_replace((Some(1), 7)); // applied more: the same leader
            tokio::time::sleep(Duration::from_millis(20)).await;
            metrics.send_replace((None, 7)); // an election began
        };
        let started = std::time::Instant::now();
        let (ended, ()) = tokio::join!(stuck, changes);
        assert_eq!(ended.unwrap_err().code(), tonic::Code::Unavailable);
        assert!(started.elapsed() >= Duration::from_millis(40), "not ended by the same leader's change");
        let answered = until_replaced(watching, leader, async { Ok::<_, Status>(5) }).await;
        assert_eq!(answered.unwrap(), 5);
    }

    /// Keeps the fields of every span created.
    #[derive(Clone, Default)]
    struct Fields(Arc<Mutex<Vec<(String, String)>>>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            // Display fields (`%value`) are recorded through Debug of a wrapper
            // that prints them with Display.
            self.0.lock().unwrap().push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    impl Subscriber for Fields {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &Attributes<'_>) -> Id {
            span.record(&mut self.clone());
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, values: &Record<'_>) {
            values.record(&mut self.clone());
        }
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, _: &Event<'_>) {}
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    /// The transfer field of the spans `make` creates.
    fn transfer_fields(make: impl FnOnce()) -> Vec<String> {
        let fields = Fields::default();
        tracing::subscriber::with_default(fields.clone(), make);
        let recorded = fields.0.lock().unwrap();
        recorded.iter().filter(|(name, _)| name == "transfer").map(|(_, value)| value.clone()).collect()
    }

    #[test]
    fn a_priced_refund_credit_crosses_the_wire_and_a_malformed_one_aborts_rather_than_retries() {
        let credit = Money::parse("1212.88", Currency::PHP).unwrap();
        for reply in [
            PrepareReply::Prepared,
            PrepareReply::PreparedCredit(credit),
            PrepareReply::Rejected(RejectCode::RateUnavailable),
        ] {
            assert_eq!(reply_in(&reply_out("cn-east:7", reply)), Some(reply));
        }
        assert_eq!(reply_out("cn-east:7", PrepareReply::Prepared).refund_credit, None);
        // A credit that does not parse is still an answer, one the
        // coordinator finds unsound (nothing) and aborts on.
        let mut garbled = reply_out("cn-east:7", PrepareReply::PreparedCredit(credit));
        garbled.refund_credit.as_mut().unwrap().amount = "12.3.4".into();
        match reply_in(&garbled) {
            Some(PrepareReply::PreparedCredit(nothing)) => assert!(nothing.is_zero()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wire_values_reach_span_fields_bounded_and_escaped() {
        let from = RegionId::new("us-west").unwrap();
        let hostile = format!("us-west:1\n\u{1b}[31mFAKE LOG LINE\r{}", "x".repeat(100_000));
        let prepare = wire::PrepareItem { transfer_id: hostile.clone(), ..Default::default() };
        let decision = wire::DecisionItem { transfer_id: hostile, ..Default::default() };
        let fields = transfer_fields(|| {
            drop(prepare_span(&prepare, &from));
            drop(decide_span(&decision, &from));
        });
        assert_eq!(fields.len(), 2);
        for field in fields {
            assert!(field.len() <= 200, "{} bytes recorded", field.len());
            assert!(!field.chars().any(char::is_control), "control characters recorded: {field:?}");
        }
        // A well-formed id is recorded as it is.
        let good = wire::PrepareItem { transfer_id: "us-west:17".into(), ..Default::default() };
        assert_eq!(transfer_fields(|| drop(prepare_span(&good, &from))), ["us-west:17"]);
    }

    /// A fresh CA for `region` in `dir`, with node 1's certificate.
    fn issue(dir: &Path, region: &str) {
        let spec = CertSpec {
            region: RegionId::new(region).unwrap(),
            holders: vec![Identity::parse(&format!("node:{region}:1")).unwrap()],
            node_hosts: vec!["localhost".into()],
        };
        generate(dir, &spec).unwrap();
    }

    fn first_der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).unwrap();
        x509_parser::pem::Pem::iter_from_buffer(&pem).next().unwrap().unwrap().contents
    }

    fn subject(der: &[u8]) -> Vec<u8> {
        x509_parser::parse_x509_certificate(der).unwrap().1.subject().as_raw().to_vec()
    }

    #[test]
    fn a_region_is_pinned_by_its_ca_keys_not_by_the_ca_name() {
        // Two CAs with the same subject: the real cn-east CA and one another
        // trusted region (or anyone the listener trusts) made with that name.
        let (real, impostor) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        issue(real.path(), "cn-east");
        issue(impostor.path(), "cn-east");
        let real_ca = first_der(&real.path().join("ca.pem"));
        let impostor_ca = first_der(&impostor.path().join("ca.pem"));
        assert_eq!(subject(&real_ca), subject(&impostor_ca), "a check by name cannot tell these apart");

        let pinned = ca_keys(&std::fs::read(real.path().join("ca.pem")).unwrap()).unwrap();
        let real_node = first_der(&real.path().join("node-cn-east-1.pem"));
        let forged_node = first_der(&impostor.path().join("node-cn-east-1.pem"));
        assert!(signed_by_one_of(&real_node, &pinned).unwrap());
        assert!(!signed_by_one_of(&forged_node, &pinned).unwrap(), "a certificate of the other CA speaks for cn-east");

        // A rollover: the file holds the old CA and the new one; both sign.
        let mut both = std::fs::read(real.path().join("ca.pem")).unwrap();
        both.extend_from_slice(&std::fs::read(impostor.path().join("ca.pem")).unwrap());
        let rollover = ca_keys(&both).unwrap();
        assert_eq!(rollover.len(), 2);
        assert!(signed_by_one_of(&real_node, &rollover).unwrap());
        assert!(signed_by_one_of(&forged_node, &rollover).unwrap());
    }
}

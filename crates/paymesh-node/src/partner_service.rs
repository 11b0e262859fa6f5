//! `paymesh.partner.v1.PartnerService`: what wallet partners call.
//!
//! The caller is the partner named by its TLS client certificate. Every field
//! is validated first (INVALID_ARGUMENT naming it, no effect). Writes go
//! through the leader's actors; reads that must be current use a linearizable
//! read. A follower answers UNAVAILABLE with the leader's address in
//! `paymesh-leader-addr`, which the SDK follows.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use paymesh_core::command::{CommandBody, PaymentRequest, QuoteRequest, RefundRequest, TransferRequest};
use paymesh_core::corridor::QuoteAmount;
use paymesh_core::history::ListToken;
use paymesh_core::ledger::{AccountId, AccountOwner};
use paymesh_core::limits::TRANSFERS_PER_REQUEST_MAX;
use paymesh_core::state::{Listing, PartnerRefund};
use paymesh_core::transfer::CoordinatorState;
use paymesh_core::{Outcome, Timestamp};
use paymesh_proto::partner::v1 as wire;
use paymesh_proto::partner::v1::partner_service_server::PartnerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::actors::partner::SUBSCRIBER_BUFFER_EVENTS;
use crate::actors::Refusal;
use crate::convert::{self, invalid};
use crate::gateway::Gateway;

/// The most transfers in one ListTransfers page, and the default.
pub const PAGE_SIZE_MAX: u32 = 500;
const PAGE_SIZE_DEFAULT: u32 = 100;

/// The most transfers one ListTransfers call examines (filters may skip many).
const LIST_SCAN_MAX: usize = 10_000;

/// Entries of a partner's list read from history at a time.
const LIST_READ_PAGE: usize = 256;

/// Serves the partner API of one node.
#[derive(Clone, Debug)]
pub struct PartnerServer {
    gateway: Gateway,
}

impl PartnerServer {
    /// The service over `gateway`.
    pub fn new(gateway: Gateway) -> PartnerServer {
        PartnerServer { gateway }
    }

    /// Submit a command that creates a transfer (a `CreateTransfer` or a
    /// `CreatePayment`, under `partner`'s `key`) in `span`, whose trace
    /// context the transfer's later steps continue, and answer with the
    /// transfer as it stands or the refusal.
    async fn transfer_answer(
        &self,
        partner: &paymesh_core::id::PartnerId,
        key: &paymesh_core::id::IdempotencyKey,
        body: CommandBody,
        span: &tracing::Span,
    ) -> Result<wire::CreateTransferResponse, Status> {
        let traced = crate::telemetry::is_traced(span);
        if traced {
            self.gateway.traces.remember(partner, key, crate::telemetry::traceparent(span));
        }
        let outcome = {
            use tracing::Instrument;
            self.gateway.submit(partner.clone(), body).instrument(span.clone()).await
        };
        self.transfer_answered(partner, outcome?, span, traced)
    }

    /// The answer to a request that created a transfer, from its
    /// `outcome`: the transfer as it stands, or the refusal. A `traced`
    /// `span` names the transfer.
    fn transfer_answered(
        &self,
        partner: &paymesh_core::id::PartnerId,
        outcome: Outcome,
        span: &tracing::Span,
        traced: bool,
    ) -> Result<wire::CreateTransferResponse, Status> {
        match outcome {
            Outcome::Transfer(view) => {
                // The span names its transfer where it is exported (an
                // attribute of a traced span). Recording a field also
                // formats it into the log's copy of every span, a cost per
                // payment for lines that never come: the log has the id
                // on the answer's own line instead.
                if traced {
                    span.record("transfer", tracing::field::display(&view.id));
                }
                span.in_scope(|| tracing::debug!(transfer = %view.id, state = ?view.state, "transfer answered"));
                // The transfer as it stands now: a retry's recorded answer
                // may be older than its transfer's state. A final answer is
                // its state for good (and reading a finished transfer back
                // from history would cost every domestic payment a read).
                let sm = &self.gateway.state_machine;
                let current = (!view.state.is_final())
                    .then(|| sm.applied().state.transfer_for(partner, &view.id, sm.history()))
                    .flatten()
                    .and_then(|t| convert::transfer_out(&t, partner))
                    .unwrap_or_else(|| convert::transfer_view_out(&view, true));
                let reject_code =
                    if view.state == CoordinatorState::Aborted { convert::reject_code_opt(view.reason) } else { 0 };
                Ok(wire::CreateTransferResponse { transfer: Some(current), reject_code })
            }
            Outcome::Rejected(code) => {
                Ok(wire::CreateTransferResponse { transfer: None, reject_code: Gateway::rejected(code)? })
            }
            other => Err(unexpected(&other)),
        }
    }

    /// One item of a `CreateTransfers` request, checked: the command it
    /// stands for, with its own span in a `traced` request (the one its
    /// single call would have had, naming its transfer, a child of the
    /// request's span `batch`, whose context the transfer's later steps
    /// continue), or the status the single call would have been refused
    /// with. Untraced, an item has no span of its own: its lines are in
    /// the request's, which names the partner (a span per item, made,
    /// formatted for the log and closed, was about 3 % of the leader's
    /// time at the batched peak, for log lines that carry their
    /// transfer's id themselves).
    fn batch_item(
        &self,
        partner: &paymesh_core::id::PartnerId,
        item: wire::TransferItem,
        batch: &tracing::Span,
        traced: bool,
    ) -> Result<(CommandBody, Option<tracing::Span>), Status> {
        let (body, key) = match item.kind {
            Some(wire::transfer_item::Kind::Transfer(item)) => {
                let request = transfer_request(partner, batched_transfer(item))?;
                let key = request.idempotency_key.clone();
                (CommandBody::CreateTransfer(request), key)
            }
            Some(wire::transfer_item::Kind::Payment(item)) => {
                let payment = payment_request(partner, batched_payment(item))?;
                let key = payment.idempotency_key.clone();
                (CommandBody::CreatePayment(payment), key)
            }
            None => return Err(invalid("kind", "set transfer or payment")),
        };
        let (transfer, trace_id) = (tracing::field::Empty, tracing::field::Empty);
        let span = traced.then(|| match body {
            CommandBody::CreateTransfer(_) => {
                tracing::info_span!(parent: batch, "create_transfer", partner = %partner, transfer, trace_id)
            }
            _ => tracing::info_span!(parent: batch, "create_payment", partner = %partner, transfer, trace_id),
        });
        if let Some(span) = &span {
            crate::telemetry::record_trace_id(span);
            self.gateway.traces.remember(partner, &key, crate::telemetry::traceparent(span));
        }
        Ok((body, span))
    }
}

/// A batch item's result: its answer, or the status its single call would
/// have returned.
fn item_result(answer: Result<wire::CreateTransferResponse, Status>) -> wire::TransferItemResult {
    match answer {
        Ok(answer) => wire::TransferItemResult {
            transfer: answer.transfer,
            reject_code: answer.reject_code,
            status_code: 0,
            status_message: String::new(),
        },
        Err(status) => wire::TransferItemResult {
            transfer: None,
            reject_code: 0,
            status_code: status.code() as i32,
            status_message: status.message().to_owned(),
        },
    }
}

/// A batch's transfer item as the request it stands for (the same fields).
fn batched_transfer(item: wire::BatchedTransfer) -> wire::CreateTransferRequest {
    let wire::BatchedTransfer { idempotency_key, quote_id, qr_payload, payer } = item;
    wire::CreateTransferRequest { idempotency_key, quote_id, qr_payload, payer }
}

/// A batch's payment item as the request it stands for (the same fields).
fn batched_payment(item: wire::BatchedPayment) -> wire::CreatePaymentRequest {
    use wire::{batched_payment::Amount as Item, create_payment_request::Amount};
    let wire::BatchedPayment { idempotency_key, qr_payload, amount, max_total_debit, payer } = item;
    let amount = amount.map(|amount| match amount {
        Item::SourceAmount(m) => Amount::SourceAmount(m),
        Item::DestinationAmount(m) => Amount::DestinationAmount(m),
    });
    wire::CreatePaymentRequest { idempotency_key, qr_payload, amount, max_total_debit, payer }
}

/// A `CreateTransfer` request of `partner`'s, checked.
fn transfer_request(
    partner: &paymesh_core::id::PartnerId,
    request: wire::CreateTransferRequest,
) -> Result<TransferRequest, Status> {
    Ok(TransferRequest {
        partner: partner.clone(),
        idempotency_key: convert::idempotency_key("idempotency_key", &request.idempotency_key)?,
        quote: convert::quote_id("quote_id", &request.quote_id)?,
        payee: convert::qr_payload("qr_payload", &request.qr_payload)?,
        payer: convert::payer_details("payer", request.payer.as_ref())?,
    })
}

/// A `CreatePayment` request of `partner`'s, checked.
fn payment_request(
    partner: &paymesh_core::id::PartnerId,
    request: wire::CreatePaymentRequest,
) -> Result<PaymentRequest, Status> {
    let amount = match &request.amount {
        Some(wire::create_payment_request::Amount::SourceAmount(m)) => quote_amount(Some(m), None),
        Some(wire::create_payment_request::Amount::DestinationAmount(m)) => quote_amount(None, Some(m)),
        None => quote_amount(None, None),
    }?;
    Ok(PaymentRequest {
        partner: partner.clone(),
        idempotency_key: convert::idempotency_key("idempotency_key", &request.idempotency_key)?,
        payee: convert::qr_payload("qr_payload", &request.qr_payload)?,
        amount,
        max_total_debit: match &request.max_total_debit {
            Some(bound) => Some(convert::positive_money("max_total_debit", Some(bound))?),
            None => None,
        },
        payer: convert::payer_details("payer", request.payer.as_ref())?,
    })
}

/// Make `span` continue the caller's trace, when the request carries a
/// `traceparent`.
fn follow_caller<T>(span: &tracing::Span, request: &Request<T>) {
    if let Some(parent) = request.metadata().get("traceparent").and_then(|v| v.to_str().ok()) {
        crate::telemetry::continue_from(span, parent);
    }
    crate::telemetry::record_trace_id(span);
}

fn unexpected(outcome: &Outcome) -> Status {
    Status::internal(format!("unexpected outcome {outcome:?}"))
}

/// The side of a payment the caller fixes, from the request's `amount`
/// (at most one of the two set): INVALID_ARGUMENT for neither.
fn quote_amount(
    source: Option<&paymesh_proto::common::v1::Money>,
    destination: Option<&paymesh_proto::common::v1::Money>,
) -> Result<QuoteAmount, Status> {
    match (source, destination) {
        (Some(m), _) => Ok(QuoteAmount::Source(convert::positive_money("source_amount", Some(m))?)),
        (None, Some(m)) => Ok(QuoteAmount::Destination(convert::positive_money("destination_amount", Some(m))?)),
        (None, None) => Err(invalid("amount", "set source_amount or destination_amount")),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<wire::StreamEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl PartnerService for PartnerServer {
    async fn lookup_payee(
        &self,
        request: Request<wire::LookupPayeeRequest>,
    ) -> Result<Response<wire::LookupPayeeResponse>, Status> {
        self.gateway.partner(&request).await?;
        let qr = convert::qr_payload("qr_payload", &request.get_ref().qr_payload)?;
        match self.gateway.state_machine.applied().state.lookup_payee(&qr) {
            Some(payee) => {
                Ok(Response::new(wire::LookupPayeeResponse { payee: Some(convert::payee_out(&payee)), reject_code: 0 }))
            }
            None => Err(Status::not_found("PayeeNotFound: no payee route matches this QR payload")),
        }
    }

    async fn create_quote(
        &self,
        request: Request<wire::CreateQuoteRequest>,
    ) -> Result<Response<wire::CreateQuoteResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let request = request.into_inner();
        let payee = convert::qr_payload("qr_payload", &request.qr_payload)?;
        let amount = match &request.amount {
            Some(wire::create_quote_request::Amount::SourceAmount(m)) => quote_amount(Some(m), None),
            Some(wire::create_quote_request::Amount::DestinationAmount(m)) => quote_amount(None, Some(m)),
            None => quote_amount(None, None),
        }?;
        let body = if request.idempotency_key.is_empty() {
            CommandBody::CreateQuote { partner: partner.clone(), payee, amount }
        } else {
            CommandBody::CreateKeyedQuote(QuoteRequest {
                partner: partner.clone(),
                idempotency_key: convert::idempotency_key("idempotency_key", &request.idempotency_key)?,
                payee,
                amount,
            })
        };
        match self.gateway.submit(partner, body).await? {
            Outcome::Quote(quote) => {
                Ok(Response::new(wire::CreateQuoteResponse { quote: Some(convert::quote_out(&quote)), reject_code: 0 }))
            }
            Outcome::Rejected(code) => {
                Ok(Response::new(wire::CreateQuoteResponse { quote: None, reject_code: Gateway::rejected(code)? }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn create_transfer(
        &self,
        request: Request<wire::CreateTransferRequest>,
    ) -> Result<Response<wire::CreateTransferResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let span = tracing::info_span!(
            "create_transfer",
            partner = %partner,
            transfer = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        follow_caller(&span, &request);
        let transfer = transfer_request(&partner, request.into_inner())?;
        let key = transfer.idempotency_key.clone();
        Ok(Response::new(self.transfer_answer(&partner, &key, CommandBody::CreateTransfer(transfer), &span).await?))
    }

    async fn create_payment(
        &self,
        request: Request<wire::CreatePaymentRequest>,
    ) -> Result<Response<wire::CreatePaymentResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let span = tracing::info_span!(
            "create_payment",
            partner = %partner,
            transfer = tracing::field::Empty,
            trace_id = tracing::field::Empty
        );
        follow_caller(&span, &request);
        let payment = payment_request(&partner, request.into_inner())?;
        let key = payment.idempotency_key.clone();
        let answer = self.transfer_answer(&partner, &key, CommandBody::CreatePayment(payment), &span).await?;
        Ok(Response::new(wire::CreatePaymentResponse { transfer: answer.transfer, reject_code: answer.reject_code }))
    }

    async fn create_transfers(
        &self,
        request: Request<wire::CreateTransfersRequest>,
    ) -> Result<Response<wire::CreateTransfersResponse>, Status> {
        let items = request.get_ref().items.len();
        if !(1..=TRANSFERS_PER_REQUEST_MAX).contains(&items) {
            return Err(invalid("items", format!("1 to {TRANSFERS_PER_REQUEST_MAX} items, not {items}")));
        }
        let partner = self.gateway.partner_charged(&request, items).await?;
        // A follower refuses the request whole, naming the leader, rather
        // than each item (an item is UNAVAILABLE only when this node stops
        // leading while it serves the request).
        if !self.gateway.registry.leads() {
            return Err(self.gateway.not_leader());
        }
        // One span for the request, and in a traced request one per item
        // under it (naming its transfer, whose later steps continue the
        // item's trace). The items go to the partner's actor in one message.
        let span = tracing::info_span!("create_transfers", partner = %partner, items, trace_id = tracing::field::Empty);
        follow_caller(&span, &request);
        let traced = crate::telemetry::is_traced(&span);
        let mut bodies = Vec::with_capacity(items);
        let checked: Vec<_> = request
            .into_inner()
            .items
            .into_iter()
            .map(|item| {
                self.batch_item(&partner, item, &span, traced).map(|(body, item_span)| {
                    bodies.push(body);
                    item_span
                })
            })
            .collect();
        let mut outcomes = {
            use tracing::Instrument;
            self.gateway.submit_all(&partner, bodies).instrument(span.clone()).await.into_iter()
        };
        let results = checked
            .into_iter()
            .map(|item| {
                item_result(item.and_then(|item_span| {
                    let outcome = outcomes.next().unwrap_or_else(|| Err(self.gateway.not_leader()))?;
                    self.transfer_answered(&partner, outcome, item_span.as_ref().unwrap_or(&span), traced)
                }))
            })
            .collect();
        Ok(Response::new(wire::CreateTransfersResponse { results }))
    }

    async fn create_refund(
        &self,
        request: Request<wire::CreateRefundRequest>,
    ) -> Result<Response<wire::CreateRefundResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let request = request.into_inner();
        let refund = RefundRequest {
            partner: partner.clone(),
            idempotency_key: convert::idempotency_key("idempotency_key", &request.idempotency_key)?,
            transfer: convert::transfer_id("transfer_id", &request.transfer_id)?,
            amount: convert::positive_money("amount", request.amount.as_ref())?,
        };
        match self.gateway.submit(partner.clone(), CommandBody::CreateRefund(refund)).await? {
            Outcome::Refund(view) => {
                // As it stands now: a retry's recorded answer may be older.
                let sm = &self.gateway.state_machine;
                let current = (!view.state.is_final())
                    .then(|| sm.applied().state.refund_for(&partner, &view.id, sm.history()))
                    .flatten()
                    .and_then(|refund| match refund {
                        PartnerRefund::Asked(refund) => Some(refund.view),
                        PartnerRefund::Credited(_) | PartnerRefund::CreditedHere(_) => None,
                    })
                    .unwrap_or_else(|| (*view).clone());
                let reject_code = if current.state == CoordinatorState::Aborted {
                    convert::reject_code_opt(current.reason)
                } else {
                    0
                };
                Ok(Response::new(wire::CreateRefundResponse {
                    refund: Some(convert::refund_out(&current)),
                    reject_code,
                }))
            }
            Outcome::Rejected(code) => {
                Ok(Response::new(wire::CreateRefundResponse { refund: None, reject_code: Gateway::rejected(code)? }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn cancel_transfer(
        &self,
        request: Request<wire::CancelTransferRequest>,
    ) -> Result<Response<wire::CancelTransferResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let transfer = convert::transfer_id("transfer_id", &request.get_ref().transfer_id)?;
        match self.gateway.submit(partner.clone(), CommandBody::CancelTransfer { partner, transfer }).await? {
            Outcome::Cancel(view) => {
                let reject_code = convert::reject_code_opt(view.reason);
                Ok(Response::new(wire::CancelTransferResponse {
                    cancel: Some(convert::cancel_out(&view)),
                    reject_code,
                }))
            }
            Outcome::Rejected(code) => {
                Ok(Response::new(wire::CancelTransferResponse { cancel: None, reject_code: Gateway::rejected(code)? }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn get_refund(
        &self,
        request: Request<wire::GetRefundRequest>,
    ) -> Result<Response<wire::GetRefundResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let id = convert::transfer_id("refund_id", &request.get_ref().refund_id)?;
        self.gateway.linearizable().await?;
        let sm = &self.gateway.state_machine;
        match sm.applied().state.refund_for(&partner, &id, sm.history()) {
            Some(refund) => {
                Ok(Response::new(wire::GetRefundResponse { refund: Some(convert::partner_refund_out(&refund)) }))
            }
            None => Err(Status::not_found(format!("RefundNotFound: no refund {id} for this partner"))),
        }
    }

    async fn list_refunds(
        &self,
        request: Request<wire::ListRefundsRequest>,
    ) -> Result<Response<wire::ListRefundsResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n.min(PAGE_SIZE_MAX),
        } as usize;
        let mut last_scanned = match request.page_token.as_str() {
            "" => ListToken { at: Timestamp::EPOCH, index: 0, seq: 0 },
            token => convert::list_token("page_token", token)?,
        };
        self.gateway.linearizable().await?;
        let sm = &self.gateway.state_machine;
        let applied = sm.applied();
        let (mut refunds, mut scanned, mut more) = (Vec::new(), 0, true);
        'pages: while refunds.len() < page_size && scanned < LIST_SCAN_MAX {
            let listed = applied.state.listed_of(&partner, Some(&last_scanned), LIST_READ_PAGE, sm.history());
            let exhausted = listed.len() < LIST_READ_PAGE;
            for (token, entry) in listed {
                if refunds.len() == page_size || scanned == LIST_SCAN_MAX {
                    break 'pages;
                }
                scanned += 1;
                last_scanned = token;
                if let Some(Listing::Refund(refund)) = entry {
                    refunds.push(convert::partner_refund_out(&refund));
                }
            }
            if exhausted {
                more = false;
                break;
            }
        }
        let next_page_token = if more { convert::list_token_out(&last_scanned) } else { String::new() };
        Ok(Response::new(wire::ListRefundsResponse { refunds, next_page_token }))
    }

    async fn get_transfer(
        &self,
        request: Request<wire::GetTransferRequest>,
    ) -> Result<Response<wire::GetTransferResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let id = convert::transfer_id("transfer_id", &request.get_ref().transfer_id)?;
        self.gateway.linearizable().await?;
        let sm = &self.gateway.state_machine;
        match sm
            .applied()
            .state
            .transfer_for(&partner, &id, sm.history())
            .and_then(|t| convert::transfer_out(&t, &partner))
        {
            Some(transfer) => Ok(Response::new(wire::GetTransferResponse { transfer: Some(transfer), reject_code: 0 })),
            None => Err(Status::not_found(format!("TransferNotFound: no transfer {id} for this partner"))),
        }
    }

    async fn list_transfers(
        &self,
        request: Request<wire::ListTransfersRequest>,
    ) -> Result<Response<wire::ListTransfersResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let request = request.into_inner();
        let state_filter = match wire::TransferState::try_from(request.state) {
            Ok(wire::TransferState::Unspecified) => None,
            Ok(state) => Some(state as i32),
            Err(_) => return Err(invalid("state", format!("{} is not a transfer state", request.state))),
        };
        let from = convert::timestamp("created_from_unix_ms", request.created_from_unix_ms)?;
        let to = convert::timestamp("created_to_unix_ms", request.created_to_unix_ms)?;
        if request.created_to_unix_ms != 0 && request.created_from_unix_ms >= request.created_to_unix_ms {
            return Err(invalid("created_to_unix_ms", "must be after created_from_unix_ms"));
        }
        let page_size = match request.page_size {
            0 => PAGE_SIZE_DEFAULT,
            n => n.min(PAGE_SIZE_MAX),
        };
        let page_size = page_size as usize;
        let after = match request.page_token.as_str() {
            // The partner's list is ordered by when each transfer was
            // recorded here: the range's start is a position in it.
            "" => ListToken { at: from, index: 0, seq: 0 },
            token => convert::list_token("page_token", token)?,
        };
        let before = (request.created_to_unix_ms != 0).then_some(to);
        self.gateway.linearizable().await?;
        let sm = &self.gateway.state_machine;
        let applied = sm.applied();
        let mut transfers = Vec::new();
        let mut last_scanned = after;
        let mut more = true;
        // Read the list in pages of the index until the page is full, the
        // range ends, or LIST_SCAN_MAX entries were scanned (a filter that
        // matches little still answers promptly, with a token to go on).
        let mut scanned = 0;
        'pages: while transfers.len() < page_size && scanned < LIST_SCAN_MAX {
            let listed = applied.state.listed_of(&partner, Some(&last_scanned), LIST_READ_PAGE, sm.history());
            let exhausted = listed.len() < LIST_READ_PAGE;
            for (token, entry) in listed {
                if before.is_some_and(|end| token.at >= end) {
                    more = false;
                    break 'pages;
                }
                if transfers.len() == page_size || scanned == LIST_SCAN_MAX {
                    break 'pages;
                }
                scanned += 1;
                last_scanned = token;
                // Refunds share the list; ListRefunds shows them.
                let Some(Listing::Transfer(transfer)) = entry else { continue };
                let Some(wire_transfer) = convert::transfer_out(&transfer, &partner) else { continue };
                if state_filter.is_none_or(|s| s == wire_transfer.state) {
                    transfers.push(wire_transfer);
                }
            }
            if exhausted {
                more = false;
                break;
            }
        }
        let next_page_token = if more { convert::list_token_out(&last_scanned) } else { String::new() };
        Ok(Response::new(wire::ListTransfersResponse { transfers, next_page_token, reject_code: 0 }))
    }

    async fn get_position(
        &self,
        request: Request<wire::GetPositionRequest>,
    ) -> Result<Response<wire::GetPositionResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let wanted = match request.get_ref().currency.as_str() {
            "" => None,
            code => Some(convert::currency("currency", code)?),
        };
        self.gateway.linearizable().await?;
        let applied = self.gateway.state_machine.applied();
        let positions = applied
            .state
            .position(&partner)
            .filter(|p| wanted.is_none_or(|c| c == p.currency))
            .map(|p| convert::position_out(&p))
            .into_iter()
            .collect();
        Ok(Response::new(wire::GetPositionResponse { positions, reject_code: 0 }))
    }

    async fn get_statement(
        &self,
        request: Request<wire::GetStatementRequest>,
    ) -> Result<Response<wire::GetStatementResponse>, Status> {
        let partner = self.gateway.partner(&request).await?;
        let request = request.into_inner();
        let currency = convert::currency("currency", &request.currency)?;
        self.gateway.linearizable().await?;
        let account = AccountId::new(AccountOwner::Partner(partner), currency);
        let (lines, next_page_token) = convert::statement_page(
            self.gateway.state_machine.history(),
            &account,
            request.from_unix_ms,
            request.to_unix_ms,
            request.page_size,
            &request.page_token,
        )?;
        Ok(Response::new(wire::GetStatementResponse { lines, next_page_token, reject_code: 0 }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        request: Request<wire::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        let partner = self.gateway.partner(&request).await?;
        // Only the leader streams, and only once it has applied everything
        // committed: a lagging node must not call a valid cursor out of range.
        self.gateway.linearizable().await?;
        let after = request.get_ref().from_cursor;
        let newest = self.gateway.state_machine.applied().state.last_cursor(&partner);
        if after > newest {
            return Err(Status::out_of_range(format!("from_cursor {after} is beyond the newest event {newest}")));
        }
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_BUFFER_EVENTS);
        match self.gateway.registry.subscribe(&partner, after, sender).await {
            Ok(Ok(())) => {}
            Ok(Err(expired)) => {
                return Err(Status::out_of_range(format!(
                    "from_cursor {}: events before {} are no longer retained; reconcile with ListTransfers",
                    expired.requested, expired.oldest
                )))
            }
            Err(Refusal::Overloaded(why)) => return Err(Status::resource_exhausted(why)),
            Err(_) => return Err(self.gateway.not_leader()),
        }
        let open = crate::metrics::events().subscribed();
        let events = ReceiverStream::new(receiver).map(move |event| {
            let _counted_while_open = &open;
            Ok(wire::StreamEventsResponse { event: Some(convert::event_out(&event)) })
        });
        // The stream ends when leadership moves or the reader falls too far
        // behind; the partner resumes from the last cursor it saw.
        let end = futures::stream::once(async {
            Err(Status::unavailable(
                "event stream ended (leadership moved or reader too slow); resume from your last cursor",
            ))
        });
        Ok(Response::new(Box::pin(events.chain(end))))
    }
}

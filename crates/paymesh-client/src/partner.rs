//! The partner API with the SDK's retry rules.

use std::sync::Arc;

use paymesh_proto::partner::v1 as wire;
use paymesh_proto::partner::v1::partner_service_client::PartnerServiceClient;
use tonic::Streaming;

use crate::batch::{Batcher, Batching, Sent};
use crate::region::{ClientError, NodeChannel, Region};

/// The largest message the SDK sends or accepts, in bytes.
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// A partner's client of its home region.
///
/// Its `create_transfer` and `create_payment` calls are batched: those in
/// flight at once travel together as the items of `CreateTransfers`
/// requests, each with its own key and its own answer (see [`Batching`]),
/// unless the client is made [`PartnerClient::unbatched`].
#[derive(Debug)]
pub struct PartnerClient {
    region: Arc<Region>,
    batcher: Option<Batcher>,
}

/// `request` as an item of a `CreateTransfers` request (the same fields).
pub fn batched_transfer(request: &wire::CreateTransferRequest) -> wire::BatchedTransfer {
    let wire::CreateTransferRequest { idempotency_key, quote_id, qr_payload, payer } = request.clone();
    wire::BatchedTransfer { idempotency_key, quote_id, qr_payload, payer }
}

/// `request` as an item of a `CreateTransfers` request (the same fields).
pub fn batched_payment(request: &wire::CreatePaymentRequest) -> wire::BatchedPayment {
    use wire::{batched_payment::Amount as Item, create_payment_request::Amount};
    let wire::CreatePaymentRequest { idempotency_key, qr_payload, amount, max_total_debit, payer } = request.clone();
    let amount = amount.map(|amount| match amount {
        Amount::SourceAmount(m) => Item::SourceAmount(m),
        Amount::DestinationAmount(m) => Item::DestinationAmount(m),
    });
    wire::BatchedPayment { idempotency_key, qr_payload, amount, max_total_debit, payer }
}

/// The partner API's gRPC client over `channel`, with the SDK's message limits.
pub(crate) fn service(channel: NodeChannel) -> PartnerServiceClient<NodeChannel> {
    PartnerServiceClient::new(channel)
        .max_decoding_message_size(MESSAGE_BYTES_MAX)
        .max_encoding_message_size(MESSAGE_BYTES_MAX)
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty) => {
        unary!($(#[$doc])* $name => $name, $request, $response);
    };
    ($(#[$doc:meta])* $name:ident => $rpc:ident, $request:ty, $response:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $request) -> Result<$response, ClientError> {
            self.region
                .call(None, |channel| {
                    let request = request.clone();
                    async move { service(channel).$rpc(request).await.map(|r| r.into_inner()) }
                })
                .await
        }
    };
}

impl PartnerClient {
    /// A client of `region`, batching its transfers as [`Batching::default`].
    pub fn new(region: Region) -> PartnerClient {
        PartnerClient::batched(region, Batching::default())
    }

    /// A client of `region`, batching its transfers as `batching` says.
    pub fn batched(region: Region, batching: Batching) -> PartnerClient {
        let region = Arc::new(region);
        PartnerClient { batcher: Some(Batcher::new(region.clone(), batching)), region }
    }

    /// A client of `region` that sends each call as its own request.
    pub fn unbatched(region: Region) -> PartnerClient {
        PartnerClient { region: Arc::new(region), batcher: None }
    }

    /// The region this client talks to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Send `item` in a batch, when this client batches: `None` when it is
    /// to go as a single call. The item is made only for a batch.
    async fn batch(
        &self,
        item: impl FnOnce() -> wire::transfer_item::Kind,
    ) -> Option<Result<wire::TransferItemResult, ClientError>> {
        let batcher = self.batcher.as_ref()?;
        match batcher.send(wire::TransferItem { kind: Some(item()) }).await {
            Sent::Answered(result) => Some(result),
            Sent::Again => None,
        }
    }

    /// Create a transfer. Retried with the same idempotency key, so a
    /// failover in the middle returns the same transfer, never a second one.
    pub async fn create_transfer(
        &self,
        request: wire::CreateTransferRequest,
    ) -> Result<wire::CreateTransferResponse, ClientError> {
        match self.batch(|| wire::transfer_item::Kind::Transfer(batched_transfer(&request))).await {
            Some(result) => {
                result.map(|r| wire::CreateTransferResponse { transfer: r.transfer, reject_code: r.reject_code })
            }
            None => self.create_transfer_alone(request).await,
        }
    }

    /// Price and pay in one call, within the bound the request states.
    /// Retried with the same idempotency key, as `create_transfer`.
    pub async fn create_payment(
        &self,
        request: wire::CreatePaymentRequest,
    ) -> Result<wire::CreatePaymentResponse, ClientError> {
        match self.batch(|| wire::transfer_item::Kind::Payment(batched_payment(&request))).await {
            Some(result) => {
                result.map(|r| wire::CreatePaymentResponse { transfer: r.transfer, reject_code: r.reject_code })
            }
            None => self.create_payment_alone(request).await,
        }
    }

    unary!(
        /// Resolve a QR payload to its payee.
        lookup_payee, wire::LookupPayeeRequest, wire::LookupPayeeResponse
    );
    unary!(
        /// Price a payment. With an idempotency key, a retry returns the same
        /// quote; without one, a retry may create a second (only one is used).
        create_quote, wire::CreateQuoteRequest, wire::CreateQuoteResponse
    );
    unary!(
        /// `create_transfer` as its own request.
        create_transfer_alone => create_transfer, wire::CreateTransferRequest, wire::CreateTransferResponse
    );
    unary!(
        /// `create_payment` as its own request.
        create_payment_alone => create_payment, wire::CreatePaymentRequest, wire::CreatePaymentResponse
    );
    unary!(
        /// Create several transfers in one request, each item answered on
        /// its own (see the API's `CreateTransfers`). Retried as a whole with
        /// the items' keys.
        create_transfers, wire::CreateTransfersRequest, wire::CreateTransfersResponse
    );
    unary!(
        /// Read one transfer.
        get_transfer, wire::GetTransferRequest, wire::GetTransferResponse
    );
    unary!(
        /// List transfers, one page.
        list_transfers, wire::ListTransfersRequest, wire::ListTransfersResponse
    );
    unary!(
        /// Refund a transfer received, in whole or in part. Retried with the
        /// same idempotency key, so a failover in the middle returns the same
        /// refund, never a second one.
        create_refund, wire::CreateRefundRequest, wire::CreateRefundResponse
    );
    unary!(
        /// Cancel a transfer paid, whole, within the region's cancel window.
        /// Retried safely: a transfer is cancelled once, and asked again
        /// answers with the first cancel.
        cancel_transfer, wire::CancelTransferRequest, wire::CancelTransferResponse
    );
    unary!(
        /// Read one refund.
        get_refund, wire::GetRefundRequest, wire::GetRefundResponse
    );
    unary!(
        /// List refunds, one page.
        list_refunds, wire::ListRefundsRequest, wire::ListRefundsResponse
    );
    unary!(
        /// Read the position.
        get_position, wire::GetPositionRequest, wire::GetPositionResponse
    );
    unary!(
        /// Read the position's statement, one page: its movements between two
        /// instants with the balances after each.
        get_statement, wire::GetStatementRequest, wire::GetStatementResponse
    );

    /// Open the event stream after `from_cursor` on the leader. When it ends
    /// (leadership moved), open it again with the last cursor seen: nothing is
    /// missed and nothing repeats.
    pub async fn stream_events(&self, from_cursor: u64) -> Result<Streaming<wire::StreamEventsResponse>, ClientError> {
        self.region
            .call(None, |channel| async move {
                service(channel).stream_events(wire::StreamEventsRequest { from_cursor }).await.map(|r| r.into_inner())
            })
            .await
    }
}

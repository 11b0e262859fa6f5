//! The partner API with the SDK's retry rules.

use paymesh_proto::partner::v1 as wire;
use paymesh_proto::partner::v1::partner_service_client::PartnerServiceClient;
use tonic::Streaming;

use crate::region::{ClientError, Region};

/// The largest message the SDK sends or accepts, in bytes.
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// A partner's client of its home region.
#[derive(Debug)]
pub struct PartnerClient {
    region: Region,
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $request:ty, $response:ty) => {
        $(#[$doc])*
        pub async fn $name(&self, request: $request) -> Result<$response, ClientError> {
            self.region
                .call(None, |channel| {
                    let request = request.clone();
                    async move { Self::client(channel).$name(request).await.map(|r| r.into_inner()) }
                })
                .await
        }
    };
}

impl PartnerClient {
    /// A client of `region`.
    pub fn new(region: Region) -> PartnerClient {
        PartnerClient { region }
    }

    /// The region this client talks to.
    pub fn region(&self) -> &Region {
        &self.region
    }

    fn client(channel: crate::region::NodeChannel) -> PartnerServiceClient<crate::region::NodeChannel> {
        PartnerServiceClient::new(channel)
            .max_decoding_message_size(MESSAGE_BYTES_MAX)
            .max_encoding_message_size(MESSAGE_BYTES_MAX)
    }

    unary!(
        /// Resolve a QR payload to its payee.
        lookup_payee, wire::LookupPayeeRequest, wire::LookupPayeeResponse
    );
    unary!(
        /// Price a payment. A retry may create a second quote; only one is used.
        create_quote, wire::CreateQuoteRequest, wire::CreateQuoteResponse
    );
    unary!(
        /// Create a transfer. Retried with the same idempotency key, so a
        /// failover in the middle returns the same transfer, never a second one.
        create_transfer, wire::CreateTransferRequest, wire::CreateTransferResponse
    );
    unary!(
        /// Price and pay in one call, within the bound the request states.
        /// Retried with the same idempotency key, as `create_transfer`.
        create_payment, wire::CreatePaymentRequest, wire::CreatePaymentResponse
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
                Self::client(channel)
                    .stream_events(wire::StreamEventsRequest { from_cursor })
                    .await
                    .map(|r| r.into_inner())
            })
            .await
    }
}

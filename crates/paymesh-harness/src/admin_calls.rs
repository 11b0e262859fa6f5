//! The admin API calls the harness and the `paymesh` command share: one
//! call on whichever node of a region leads, a wire amount, a refusal as an
//! error naming its reject code, and the wall clock in Unix milliseconds.

use std::future::Future;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::bail;
use paymesh_client::{NodeChannel, Region};
use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;
use paymesh_proto::common::v1 as common;

/// A wire amount.
pub fn money(amount: &str, currency: &str) -> Option<common::Money> {
    Some(common::Money { amount: amount.to_owned(), currency: currency.to_owned() })
}

/// Run one admin call on whichever of `region`'s nodes leads, as the
/// region's credentials say.
pub async fn call_region<T, F, Fut>(region: &Region, call: F) -> anyhow::Result<T>
where
    F: Fn(AdminServiceClient<NodeChannel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let answer = region
        .call(None, |channel| {
            let fut = call(AdminServiceClient::new(channel));
            async move { fut.await.map(|r| r.into_inner()) }
        })
        .await?;
    Ok(answer)
}

/// A reject code's short name (`INSUFFICIENT_POSITION`), or its number when
/// this version does not know it.
pub fn reject_name(code: i32) -> String {
    common::RejectCode::try_from(code).map_or_else(
        |_| format!("reject code {code}"),
        |c| c.as_str_name().trim_start_matches("REJECT_CODE_").to_owned(),
    )
}

/// Fail with the reject code's name unless it is UNSPECIFIED.
pub fn accepted(reject_code: i32) -> anyhow::Result<()> {
    if reject_code == 0 {
        return Ok(());
    }
    bail!("refused: {}", reject_name(reject_code))
}

/// Now, in Unix milliseconds.
pub fn unix_ms_now() -> i64 {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// `ms` as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(ms: u64) -> String {
    paymesh_core::Timestamp::from_unix_ms(ms).to_rfc3339()
}

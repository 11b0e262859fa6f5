//! Automatic batching: the `CreateTransfer` and `CreatePayment` calls that
//! one [`crate::PartnerClient`] has in flight at once travel together, as
//! the items of `CreateTransfers` requests.
//!
//! A call joins a queue; one task takes from it. While fewer than
//! [`Batching::requests_in_flight`] requests are on their way, the task
//! sends what is queued at once (a lone call goes alone, at once: nothing
//! waits for company); when that many are out, calls gather in the queue
//! until one comes back, and the next request takes all of them (up to
//! [`Batching::items_per_request`]). So batches grow with the load by
//! themselves, as the leader's own entries do, and each item pays a share
//! of one request's gRPC, HTTP/2 and TLS work instead of a whole call's.
//!
//! Each item keeps the rules of its single call: its own idempotency key,
//! its own answer, never another item's fate. A request that fails as a
//! whole is retried as a whole (its keys make that safe) under the region's
//! retry policy; an item answered UNAVAILABLE (the node stopped leading
//! during the request) or with another transient status is sent again
//! alone, as a single call with the same key.

use std::sync::{Arc, OnceLock};

use paymesh_proto::partner::v1 as wire;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;

use crate::region::{ClientError, Region};

/// The most items one `CreateTransfers` request may carry (the API's limit).
pub const ITEMS_PER_REQUEST_MAX: usize = 500;

/// How a client batches its calls.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Requests on their way at once; calls made while that many are out
    /// wait for the next. At least 1.
    pub requests_in_flight: usize,
    /// The most items in one request, 1 to [`ITEMS_PER_REQUEST_MAX`].
    pub items_per_request: usize,
}

impl Default for Batching {
    fn default() -> Self {
        Batching { requests_in_flight: 4, items_per_request: ITEMS_PER_REQUEST_MAX }
    }
}

/// Calls waiting in the queue, at most: a caller beyond waits for room.
const QUEUE_ITEMS_MAX: usize = 4 * ITEMS_PER_REQUEST_MAX;

/// A call waiting for its request.
struct Waiting {
    item: wire::TransferItem,
    answer: Answer,
}

/// Where one item's result goes.
type Answer = oneshot::Sender<Result<wire::TransferItemResult, ClientError>>;

/// One client's queue of calls and the task that sends them, started on
/// first use (in the caller's runtime).
pub(crate) struct Batcher {
    region: Arc<Region>,
    setting: Batching,
    queue: OnceLock<mpsc::Sender<Waiting>>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("setting", &self.setting).finish_non_exhaustive()
    }
}

/// What became of an item sent in a batch.
pub(crate) enum Sent {
    /// Its answer, or a status that retrying will not change.
    Answered(Result<wire::TransferItemResult, ClientError>),
    /// Not answered for good (the batch task is gone, or the item met a
    /// transient status): send it alone.
    Again,
}

impl Batcher {
    pub(crate) fn new(region: Arc<Region>, setting: Batching) -> Batcher {
        let setting = Batching {
            requests_in_flight: setting.requests_in_flight.max(1),
            items_per_request: setting.items_per_request.clamp(1, ITEMS_PER_REQUEST_MAX),
        };
        Batcher { region, setting, queue: OnceLock::new() }
    }

    fn queue(&self) -> &mpsc::Sender<Waiting> {
        self.queue.get_or_init(|| {
            let (queue, waiting) = mpsc::channel(QUEUE_ITEMS_MAX);
            tokio::spawn(run(self.region.clone(), self.setting, waiting));
            queue
        })
    }

    /// Send `item` in the next request.
    pub(crate) async fn send(&self, item: wire::TransferItem) -> Sent {
        let (answer, answered) = oneshot::channel();
        if self.queue().send(Waiting { item, answer }).await.is_err() {
            return Sent::Again;
        }
        match answered.await {
            Ok(Ok(result)) if result.status_code == 0 => Sent::Answered(Ok(result)),
            Ok(Ok(result)) => {
                let status = Status::new(tonic::Code::from_i32(result.status_code), result.status_message);
                if crate::region::retryable(&status) {
                    Sent::Again
                } else {
                    Sent::Answered(Err(ClientError::Refused(status)))
                }
            }
            Ok(Err(error)) => Sent::Answered(Err(error)),
            Err(_) => Sent::Again,
        }
    }
}

/// The batch task: take what is queued, at most `setting.items_per_request`
/// at a time, whenever fewer than `setting.requests_in_flight` requests are
/// out. Ends when the client is dropped, once its requests are answered.
async fn run(region: Arc<Region>, setting: Batching, mut waiting: mpsc::Receiver<Waiting>) {
    let slots = Arc::new(Semaphore::new(setting.requests_in_flight));
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { break };
        let mut batch = vec![first];
        while batch.len() < setting.items_per_request {
            match waiting.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let region = region.clone();
        tokio::spawn(async move {
            answer(&region, batch).await;
            drop(slot);
        });
    }
}

/// Send one request for `batch` and give each caller its item's result.
async fn answer(region: &Region, batch: Vec<Waiting>) {
    // The items move into the request; each attempt sends a copy of it.
    let (items, batch): (Vec<wire::TransferItem>, Vec<Answer>) =
        batch.into_iter().map(|waiting| (waiting.item, waiting.answer)).unzip();
    let request = wire::CreateTransfersRequest { items };
    let response = region
        .call(None, |channel| {
            let request = request.clone();
            async move { crate::partner::service(channel).create_transfers(request).await.map(|r| r.into_inner()) }
        })
        .await;
    match response {
        Ok(response) if response.results.len() == batch.len() => {
            for (answer, result) in batch.into_iter().zip(response.results) {
                let _ = answer.send(Ok(result));
            }
        }
        Ok(response) => {
            let status = Status::internal(format!(
                "the node answered {} results for {} items",
                response.results.len(),
                batch.len()
            ));
            for answer in batch {
                let _ = answer.send(Err(ClientError::Refused(status.clone())));
            }
        }
        Err(error) => {
            for answer in batch {
                let _ = answer.send(Err(error.clone()));
            }
        }
    }
}

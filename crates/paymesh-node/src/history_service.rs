//! `paymesh.admin.v1.HistoryService`: export this node's history journal as
//! archive frames, confirm an archive against it, delete what was archived
//! and is past the 400-day window, and report where history stands. Every
//! call acts on this node alone (each replica archives and deletes its own
//! history), for operators only.
//!
//! The work is done by `paymesh_store::archive` and
//! [`History`](paymesh_store::History) on blocking threads: an export reads
//! the journal in chunks handed to the response stream through a channel of
//! [`EXPORT_CHUNKS_BUFFERED`], so it holds a few MiB whatever the size of
//! history, and stops when the caller goes away.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use paymesh_core::limits::HISTORY_RETENTION_MIN_MS;
use paymesh_core::Timestamp;
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::history_service_server::HistoryService;
use paymesh_store::archive::{range_digest, Export, ExportChunk, ExportError};
use paymesh_store::history::{Deletable, DeletionStop};
use paymesh_store::{History, HistoryError, StateMachineStore};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::config::NodeConfig;
use crate::convert::unix_ms;
use crate::identity::{Authenticator, Identity};

/// Bytes of frames per export message, about (whole batches: one batch
/// alone may be larger).
pub const EXPORT_CHUNK_BYTES: usize = 1024 * 1024;

/// The largest export message this service sends: a chunk of whole batches
/// can exceed [`EXPORT_CHUNK_BYTES`] by one batch's records.
pub const HISTORY_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Export messages read ahead of the caller.
pub const EXPORT_CHUNKS_BUFFERED: usize = 2;

/// Serves one node's history archiving and retention, to operators.
#[derive(Clone, Debug)]
pub struct HistoryServer {
    config: Arc<NodeConfig>,
    state_machine: StateMachineStore,
    auth: Authenticator,
}

impl HistoryServer {
    /// The service of the node configured by `config`, over its
    /// `state_machine`, telling callers apart with `auth`.
    pub fn new(config: Arc<NodeConfig>, state_machine: StateMachineStore, auth: Authenticator) -> HistoryServer {
        HistoryServer { config, state_machine, auth }
    }

    /// The calling operator; PERMISSION_DENIED for anyone else.
    fn operator<T>(&self, request: &Request<T>) -> Result<String, Status> {
        match self.auth.identify(request)? {
            Identity::Operator(name) => Ok(name),
            other => Err(Status::permission_denied(format!("{other} may not call the history API"))),
        }
    }

    /// Run `work` over this node's history on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&History) -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.state_machine.clone();
        tokio::task::spawn_blocking(move || work(store.history()))
            .await
            .map_err(|e| Status::internal(format!("history task: {e}")))?
    }
}

fn history_status(error: HistoryError) -> Status {
    match error {
        HistoryError::Deleted { .. } => Status::aborted(format!("{error}; retry")),
        other => Status::internal(other.to_string()),
    }
}

fn export_status(error: ExportError) -> Status {
    match error {
        ExportError::History(e) => history_status(e),
        ExportError::Range(why) => Status::failed_precondition(why),
        ExportError::Gone(why) => Status::cancelled(why),
    }
}

/// The oldest time a record may have and still be kept whatever the
/// configuration: the applied clock less 400 days.
pub fn window_cutoff(clock: Timestamp) -> Timestamp {
    clock.minus_ms(HISTORY_RETENTION_MIN_MS)
}

/// What a deletion did, in the response's terms and in words.
pub fn deletion_response(
    before: u64,
    after: u64,
    records: usize,
    archived: u64,
    found: &Deletable,
    cutoff: Timestamp,
) -> wire::DeleteHistoryResponse {
    let (stop, why, retained_index, retained_at) = match found.stop {
        DeletionStop::Requested => (wire::DeletionStop::Requested, "the index asked for".to_owned(), 0, 0),
        DeletionStop::Archive => (
            wire::DeletionStop::NotArchived,
            format!(
                "the last index an archive was confirmed for ({archived}); export and confirm an archive to delete \
                 further"
            ),
            0,
            0,
        ),
        DeletionStop::Retention { index, at } => (
            wire::DeletionStop::Retention,
            format!(
                "the batch at index {index} holds a record of {} ms, not older than the cutoff {} ms (the applied \
                 clock less the retention)",
                at.unix_ms(),
                cutoff.unix_ms()
            ),
            index,
            unix_ms(at),
        ),
        DeletionStop::End => (wire::DeletionStop::End, "the last index this node's history holds".to_owned(), 0, 0),
    };
    let explanation = if after > before {
        format!("deleted {records} records of indexes {}..={after}; stopped at {after}: {why}", before + 1)
    } else {
        format!("deleted nothing: history stays deleted through {before}; it stops there: {why}")
    };
    wire::DeleteHistoryResponse {
        deleted_records: records as u64,
        deleted_before: before,
        deleted_through: after,
        stop: stop as i32,
        archived_through: archived,
        retained_index,
        retained_at_unix_ms: retained_at,
        cutoff_unix_ms: unix_ms(cutoff),
        explanation,
    }
}

/// Delete `history` through `requested` at most, and no further than
/// [`History::deletable_through`] allows with `cutoff`: what was done.
pub fn delete_within(
    history: &History,
    requested: u64,
    cutoff: Timestamp,
) -> Result<wire::DeleteHistoryResponse, HistoryError> {
    let before = history.deleted_through();
    let found = history.deletable_through(requested, cutoff)?;
    let records = if found.through > before { history.delete_through(found.through)? } else { 0 };
    let after = history.deleted_through();
    Ok(deletion_response(before, after, records, history.archived_through(), &found, cutoff))
}

type ExportStream = Pin<Box<dyn Stream<Item = Result<wire::ExportHistoryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl HistoryService for HistoryServer {
    type ExportHistoryStream = ExportStream;

    async fn export_history(
        &self,
        request: Request<wire::ExportHistoryRequest>,
    ) -> Result<Response<Self::ExportHistoryStream>, Status> {
        let operator = self.operator(&request)?;
        let through = request.into_inner().through_unix_ms;
        let before = u64::try_from(through)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Timestamp::from_unix_ms)
            .ok_or_else(|| Status::invalid_argument("through_unix_ms: must be positive (Unix milliseconds)"))?;
        let (sender, receiver) = mpsc::channel(EXPORT_CHUNKS_BUFFERED);
        let store = self.state_machine.clone();
        let header = wire::ArchiveHeader {
            region: self.config.region.to_string(),
            first_index: 0,
            created_at_unix_ms: unix_ms(crate::gateway::now()),
            node_id: self.config.node_id,
        };
        tracing::info!(operator, through_unix_ms = through, "history export started");
        tokio::task::spawn_blocking(move || {
            let history = store.history();
            let export = Export::new(history, before);
            let mut header = Some(wire::ArchiveHeader { first_index: export.first_index(), ..header });
            let first = wire::ExportHistoryResponse { header: header.take(), ..Default::default() };
            if sender.blocking_send(Ok(first)).is_err() {
                return;
            }
            let sent = export.run(EXPORT_CHUNK_BYTES, |chunk: ExportChunk| {
                let message = wire::ExportHistoryResponse {
                    frames: chunk.frames,
                    records: chunk.records,
                    batch_index: chunk.last_index,
                    ..Default::default()
                };
                sender.blocking_send(Ok(message)).map_err(|_| "the caller went away".to_owned())
            });
            let last = match sent {
                Ok(range) => {
                    tracing::info!(
                        operator,
                        first_index = range.first_index,
                        last_index = range.last_index,
                        records = range.records,
                        bytes = range.frame_bytes,
                        "history exported"
                    );
                    Ok(wire::ExportHistoryResponse {
                        done: true,
                        last_index: range.last_index,
                        total_records: range.records,
                        sha256: range.sha256.to_vec(),
                        ..Default::default()
                    })
                }
                Err(e) => {
                    tracing::warn!(operator, %e, "history export failed");
                    Err(export_status(e))
                }
            };
            let _ = sender.blocking_send(last);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn confirm_archive(
        &self,
        request: Request<wire::ConfirmArchiveRequest>,
    ) -> Result<Response<wire::ConfirmArchiveResponse>, Status> {
        let operator = self.operator(&request)?;
        let r = request.into_inner();
        let claimed: [u8; 32] = r
            .sha256
            .as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument(format!("sha256: {} bytes, not 32", r.sha256.len())))?;
        let through = r.through_index;
        let (records, archived) = self
            .blocking(move |history| {
                let first = if r.first_index == 0 { history.deleted_through() + 1 } else { r.first_index };
                if through < first {
                    return Err(Status::failed_precondition(format!(
                        "the archive covers no index this node's journal holds: it ends at {through}, the journal \
                         starts at {}",
                        history.deleted_through() + 1
                    )));
                }
                let (records, computed) = range_digest(history, first, through).map_err(export_status)?;
                if computed != claimed {
                    return Err(Status::failed_precondition(format!(
                        "the archive's SHA-256 {} differs from this node's journal's over indexes {first}..={through} \
                         ({records} records, SHA-256 {}): it is not an archive of this history",
                        hex::encode(claimed),
                        hex::encode(computed)
                    )));
                }
                let archived = history.confirm_archived(through).map_err(history_status)?;
                Ok((records, archived))
            })
            .await?;
        tracing::info!(operator, through_index = through, records, archived_through = archived, "archive confirmed");
        Ok(Response::new(wire::ConfirmArchiveResponse { records, archived_through: archived }))
    }

    async fn delete_history(
        &self,
        request: Request<wire::DeleteHistoryRequest>,
    ) -> Result<Response<wire::DeleteHistoryResponse>, Status> {
        let operator = self.operator(&request)?;
        let through = request.into_inner().through_index;
        if through == 0 {
            return Err(Status::invalid_argument("through_index: must be positive"));
        }
        let cutoff = window_cutoff(self.state_machine.applied().state.clock());
        let response =
            self.blocking(move |history| delete_within(history, through, cutoff).map_err(history_status)).await?;
        tracing::info!(
            operator,
            through_index = through,
            deleted = response.deleted_records,
            deleted_through = response.deleted_through,
            explanation = response.explanation,
            "history deletion"
        );
        Ok(Response::new(response))
    }

    async fn get_history_status(
        &self,
        request: Request<wire::GetHistoryStatusRequest>,
    ) -> Result<Response<wire::GetHistoryStatusResponse>, Status> {
        self.operator(&request)?;
        let clock = self.state_machine.applied().state.clock();
        let history = self.state_machine.history();
        let bytes_on_disk = history.size_on_disk().map_err(history_status)?;
        let engine = history.engine_memory();
        Ok(Response::new(wire::GetHistoryStatusResponse {
            last_index: history.last_index(),
            deleted_through: history.deleted_through(),
            archived_through: history.archived_through(),
            records: history.records(),
            retention_days: self.config.history.retention_days,
            clock_unix_ms: unix_ms(clock),
            bytes_on_disk,
            engine_cache_bytes: engine.cache,
            engine_write_buffer_bytes: engine.write_buffers,
        }))
    }
}

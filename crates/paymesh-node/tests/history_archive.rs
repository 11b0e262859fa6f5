//! Archiving and retention on a node: a single-node region whose log holds
//! transfers of two years ago (a seeded Raft log, applied at the node's
//! start) and one made now. Its history is exported through
//! `HistoryService` into archive files, which verify and give the old
//! transfer back; an archive is confirmed only with its true digest; the
//! node deletes what was confirmed and is past the window (never beyond
//! either), and then still serves everything it kept, reporting the
//! deleted events as an expired cursor.
//!
//! The services run in process (development identities in the
//! `x-paymesh-identity` header) and are called directly.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use paymesh_core::history::Record;
use paymesh_core::id::{PartnerId, RegionId, TransferId};
use paymesh_core::ledger::EntryId;
use paymesh_core::limits::DAY_MS;
use paymesh_core::Timestamp;
use paymesh_node::config::{NodeConfig, PeerConfig, RaftSettings};
use paymesh_node::history_service::HistoryServer;
use paymesh_node::partner_service::PartnerServer;
use paymesh_node::testing::{seed_old_log, Seeded, SEED_PAYER};
use paymesh_node::{retention, Node};
use paymesh_proto::admin::v1 as admin;
use paymesh_proto::admin::v1::admin_service_server::AdminService;
use paymesh_proto::admin::v1::history_service_server::HistoryService;
use paymesh_proto::common::v1 as common;
use paymesh_proto::partner::v1 as wire;
use paymesh_proto::partner::v1::partner_service_server::PartnerService;
use paymesh_store::archive::{verify_file, ArchiveHeader, ArchiveReader, ArchiveSummary, ArchiveWriter};
use paymesh_store::{HistoryError, NodeAddr};
use tonic::{Code, Request};

const YEAR_MS: u64 = 365 * DAY_MS;

fn as_<T>(identity: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("x-paymesh-identity", identity.parse().unwrap());
    request
}

fn operator<T>(message: T) -> Request<T> {
    as_("operator:ops", message)
}

fn payer<T>(message: T) -> Request<T> {
    as_(&format!("partner:{SEED_PAYER}"), message)
}

fn now() -> Timestamp {
    paymesh_node::gateway::now()
}

fn ms(at: Timestamp) -> i64 {
    at.unix_ms() as i64
}

struct Fixture {
    node: Node,
    history: HistoryServer,
    partner: PartnerServer,
    seeded: Seeded,
    dir: tempfile::TempDir,
    _pipeline: paymesh_node::node::Pipeline,
}

/// A node whose log holds three transfers made two years ago.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let region = RegionId::new("us-west").unwrap();
    let config = NodeConfig {
        node_id: 1,
        region: region.clone(),
        raft_listen: "127.0.0.1:0".parse().unwrap(),
        api_listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("node"),
        insecure_plaintext: true,
        insecure_plaintext_beyond_loopback: false,
        tls: None,
        peers: vec![PeerConfig { node_id: 1, raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() }],
        interregion_listen: None,
        remote_regions: Vec::new(),
        raft_dial: Default::default(),
        source: None,
        limits: Default::default(),
        history: Default::default(),
        webhooks: Default::default(),
        metrics: Default::default(),
        console: Default::default(),
        raft: RaftSettings::default(),
    };
    let member = (1, NodeAddr { raft_addr: "127.0.0.1:1".into(), api_addr: "127.0.0.1:2".into() });
    let seeded = seed_old_log(&config.data_dir, &region, &[member], now().minus_ms(2 * YEAR_MS), 3).await.unwrap();
    let node = Node::open(config).await.unwrap();
    // No init: the seeded log names the membership; the node elects itself
    // and applies the old entries behind its own first one.
    node.raft
        .wait(Some(Duration::from_secs(20)))
        .applied_index(Some(seeded.last_index + 1), "the seeded log is applied")
        .await
        .unwrap();
    let pipeline = node.start_pipeline().unwrap();
    let fixture = Fixture {
        history: HistoryServer::new(node.config.clone(), node.state_machine.clone(), node.auth.clone()),
        partner: PartnerServer::new(pipeline.gateway.clone()),
        node,
        seeded,
        dir,
        _pipeline: pipeline,
    };
    // The pipeline leads once a request reaches a partner's actor, which a
    // read does not: a transfer under a quote that does not exist is
    // refused there (NOT_FOUND), leaving nothing behind. Before the actors
    // learn that the node leads it is UNAVAILABLE.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let probe = payer(wire::CreateTransferRequest {
                idempotency_key: "probe".into(),
                quote_id: "us-west:q999999".into(),
                qr_payload: "pay://merchant/new".into(),
                payer: Some(wire::PayerDetails { name: "Ada".into(), account: "a-1".into(), reference: "r".into() }),
            });
            match fixture.partner.create_transfer(probe).await {
                Err(status) if status.code() == Code::NotFound => break,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the pipeline starts within 10 s");
    fixture
}

impl Fixture {
    /// Pay now; the transfer's id.
    async fn pay(&self, key: &str) -> String {
        let quote = self
            .partner
            .create_quote(payer(wire::CreateQuoteRequest {
                qr_payload: "pay://merchant/new".into(),
                amount: Some(wire::create_quote_request::Amount::SourceAmount(common::Money {
                    amount: "5".into(),
                    currency: "USD".into(),
                })),
                idempotency_key: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        let quote = quote.quote.unwrap_or_else(|| panic!("quote refused: {}", quote.reject_code));
        let created = self
            .partner
            .create_transfer(payer(wire::CreateTransferRequest {
                idempotency_key: key.into(),
                quote_id: quote.quote_id,
                qr_payload: "pay://merchant/new".into(),
                payer: Some(wire::PayerDetails { name: "Ada".into(), account: "a-1".into(), reference: "r".into() }),
            }))
            .await
            .unwrap()
            .into_inner();
        let transfer = created.transfer.unwrap();
        assert_eq!(transfer.state, wire::TransferState::Committed as i32);
        transfer.transfer_id
    }

    /// Export through `through` into `name` via the RPC; the file's summary
    /// after verifying it, and the export's closing message.
    async fn export(&self, through: Timestamp, name: &str) -> (ArchiveSummary, admin::ExportHistoryResponse) {
        let request = admin::ExportHistoryRequest { through_unix_ms: ms(through) };
        let mut stream = self.history.export_history(operator(request)).await.unwrap().into_inner();
        let first = stream.next().await.unwrap().unwrap();
        let header = first.header.unwrap();
        assert_eq!((header.region.as_str(), header.node_id), ("us-west", 1));
        let path = self.dir.path().join(name);
        let mut writer = ArchiveWriter::create(
            &path,
            ArchiveHeader {
                region: header.region.parse().unwrap(),
                first_index: header.first_index,
                last_index: header.first_index,
                created_at: Timestamp::from_unix_ms(header.created_at_unix_ms as u64),
                node_id: header.node_id,
            },
        )
        .unwrap();
        loop {
            let message = stream.next().await.unwrap().unwrap();
            if message.done {
                let summary = writer.finish(message.last_index).unwrap();
                assert_eq!(summary.sha256.as_slice(), message.sha256.as_slice());
                assert_eq!(summary.records, message.total_records);
                assert!(stream.next().await.is_none());
                assert_eq!(verify_file(&path).unwrap(), summary);
                return (summary, message);
            }
            assert!(message.frames.len() <= 1 << 20, "at most 1 MiB of frames per message");
            assert_eq!(writer.write_frames(&message.frames).unwrap(), message.records);
        }
    }

    async fn confirm(&self, summary: &ArchiveSummary) -> Result<admin::ConfirmArchiveResponse, tonic::Status> {
        let request = admin::ConfirmArchiveRequest {
            first_index: summary.header.first_index,
            through_index: summary.header.last_index,
            sha256: summary.sha256.to_vec(),
        };
        self.history.confirm_archive(operator(request)).await.map(tonic::Response::into_inner)
    }

    async fn delete(&self, through_index: u64) -> admin::DeleteHistoryResponse {
        let request = admin::DeleteHistoryRequest { through_index };
        self.history.delete_history(operator(request)).await.unwrap().into_inner()
    }

    fn clock(&self) -> Timestamp {
        self.node.state_machine.applied().state.clock()
    }
}

/// Every record of the archive at `path` naming `transfer`.
fn records_naming(path: &Path, transfer: &TransferId) -> Vec<Record> {
    let mut reader = ArchiveReader::open_file(path).unwrap();
    let mut found = Vec::new();
    while let Some(frame) = reader.next_frame().unwrap() {
        let names = match &frame.record {
            Record::Transfer(t) => &t.view.id == transfer,
            Record::Listed { transfer: t, .. } => t == transfer,
            Record::Event { event, .. } => &event.transfer == transfer,
            Record::Movement(m) => matches!(&m.entry, EntryId::Transfer { transfer: t, .. } if t == transfer),
            _ => false,
        };
        if names {
            found.push(frame.record);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_history_is_archived_confirmed_and_deleted_and_the_node_serves_the_rest() {
    let f = fixture().await;
    let fresh = f.pay("fresh-1").await;
    let old = f.seeded.transfers[0].clone();
    let history = f.node.state_machine.history();
    let wallet = PartnerId::new(SEED_PAYER).unwrap();

    // Operators only.
    let refused = f.history.delete_history(payer(admin::DeleteHistoryRequest { through_index: 1 })).await;
    assert_eq!(refused.unwrap_err().code(), Code::PermissionDenied);

    // A first archive: the configuration entry, up to the old transfers.
    let (config_archive, closing) = f.export(f.seeded.last_at, "config.pmarchive").await;
    assert_eq!((config_archive.header.first_index, closing.last_index), (1, f.seeded.last_index - 1));
    assert!(config_archive.records > 0);

    // A wrong digest is refused and remembers nothing.
    let mut forged = config_archive.clone();
    forged.sha256[0] ^= 1;
    let error = f.confirm(&forged).await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition);
    assert!(error.message().contains("differs from this node's journal"), "{error:?}");
    assert_eq!(history.archived_through(), 0);
    // Nothing archived: nothing deleted, however old.
    let nothing = f.delete(u64::MAX).await;
    assert_eq!((nothing.deleted_records, nothing.stop), (0, admin::DeletionStop::NotArchived as i32));

    let confirmed = f.confirm(&config_archive).await.unwrap();
    assert_eq!((confirmed.records, confirmed.archived_through), (config_archive.records, closing.last_index));
    // Asked beyond the archive: deleted through the archive, and no further.
    let done = f.delete(f.seeded.last_index + 5).await;
    assert_eq!(done.deleted_records, config_archive.records);
    assert_eq!((done.deleted_before, done.deleted_through), (0, closing.last_index));
    assert_eq!(done.stop, admin::DeletionStop::NotArchived as i32);
    assert!(done.explanation.contains("export and confirm an archive"), "{}", done.explanation);
    // The deleted range can no longer be confirmed.
    let error = f.confirm(&config_archive).await.unwrap_err();
    assert!(error.message().contains("starts at"), "{error:?}");

    // Retention: nothing is past seven years; past 400 days the old
    // transfers are, but wait for an archive.
    let clock = f.clock();
    let pass = retention::pass(history, clock, 2_557 * DAY_MS).unwrap();
    assert_eq!((pass.deleted, pass.waiting), (0, None));
    let pass = retention::pass(history, clock, 400 * DAY_MS).unwrap();
    assert_eq!((pass.deleted, pass.waiting), (0, Some(f.seeded.last_index)));

    // The archive of the old transfers gives one back from the file.
    let (old_archive, closing) = f.export(now().minus_ms(YEAR_MS), "old.pmarchive").await;
    assert_eq!(old_archive.header.first_index, f.seeded.last_index);
    assert!(closing.last_index >= f.seeded.last_index && old_archive.records > 0);
    let found = records_naming(&f.dir.path().join("old.pmarchive"), &old);
    assert!(found.iter().any(|r| matches!(r, Record::Transfer(t) if t.view.id == old)), "{found:?}");
    assert!(found.iter().any(|r| matches!(r, Record::Event { .. })), "{found:?}");
    assert!(found.iter().any(|r| matches!(r, Record::Listed { .. })), "{found:?}");
    assert!(found.iter().any(|r| matches!(r, Record::Movement(_))), "{found:?}");
    let old_cursor = {
        let mut reader = ArchiveReader::open_file(&f.dir.path().join("old.pmarchive")).unwrap();
        let mut newest = 0;
        while let Some(frame) = reader.next_frame().unwrap() {
            if let Record::Event { partner, event } = frame.record {
                if partner == wallet {
                    newest = newest.max(event.cursor);
                }
            }
        }
        newest
    };
    assert_eq!(old_cursor, 3, "one event each for the payer's three old transfers");
    f.confirm(&old_archive).await.unwrap();

    // Retention past 400 days now deletes them; nothing waits.
    let pass = retention::pass(history, clock, 400 * DAY_MS).unwrap();
    assert_eq!(pass.deleted as u64, old_archive.records);
    assert_eq!((pass.deleted_through, pass.waiting), (closing.last_index, None));

    // Everything else archived too: still nothing inside 400 days goes.
    let (rest, _) = f.export(now().plus_ms(DAY_MS), "rest.pmarchive").await;
    assert_eq!(rest.header.first_index, closing.last_index + 1);
    f.confirm(&rest).await.unwrap();
    assert_eq!(history.archived_through(), rest.header.last_index);
    let kept = f.delete(u64::MAX).await;
    assert_eq!(kept.deleted_records, 0);
    assert_eq!(kept.stop, admin::DeletionStop::Retention as i32);
    assert_eq!(kept.deleted_through, closing.last_index);
    assert_eq!(kept.retained_index, closing.last_index + 1);
    assert!(kept.retained_at_unix_ms > kept.cutoff_unix_ms, "{kept:?}");

    // The node serves what it kept: the new transfer, not the deleted one.
    let got = f.partner.get_transfer(payer(wire::GetTransferRequest { transfer_id: fresh.clone() })).await.unwrap();
    assert_eq!(got.into_inner().transfer.unwrap().transfer_id, fresh);
    let gone = f.partner.get_transfer(payer(wire::GetTransferRequest { transfer_id: old.to_string() })).await;
    assert_eq!(gone.unwrap_err().code(), Code::NotFound);
    let listed = f
        .partner
        .list_transfers(payer(wire::ListTransfersRequest { page_size: 10, ..Default::default() }))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<&str> = listed.transfers.iter().map(|t| t.transfer_id.as_str()).collect();
    assert_eq!(ids, [fresh.as_str()]);
    // Events after the deleted range stream; a cursor inside it has expired.
    let mut events = f
        .partner
        .stream_events(payer(wire::StreamEventsRequest { from_cursor: old_cursor }))
        .await
        .unwrap()
        .into_inner();
    let event = events.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!((event.cursor, event.transfer_id.as_str()), (old_cursor + 1, fresh.as_str()));
    let expired = f.partner.stream_events(payer(wire::StreamEventsRequest { from_cursor: 0 })).await;
    let status = match expired {
        Err(status) => status,
        Ok(_) => panic!("a cursor in the deleted range streams"),
    };
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(
        status.message().contains(&format!("events before {} are no longer retained", old_cursor + 1)),
        "{status:?}"
    );
    match history.events_after(&wallet, 1, 10) {
        Err(HistoryError::CursorExpired(expired)) => {
            assert_eq!((expired.requested, expired.oldest), (1, old_cursor + 1))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(history.events_after(&wallet, old_cursor, 10).unwrap().len(), 1);

    // A webhook replayed from cursor 0 starts at the oldest event history
    // still holds; a cursor inside the deleted range is OUT_OF_RANGE.
    let operators = paymesh_node::admin_service::AdminServer::new(f._pipeline.gateway.clone());
    let set = admin::SetWebhookRequest {
        partner_id: SEED_PAYER.into(),
        url: "http://127.0.0.1:9/hook".into(),
        secret: "0123456789abcdef0123456789abcdef".into(),
    };
    assert_eq!(operators.set_webhook(operator(set)).await.unwrap().into_inner().reject_code, 0);
    let replay = |after_cursor| admin::ReplayWebhookRequest { partner_id: SEED_PAYER.into(), after_cursor };
    let replayed = operators.replay_webhook(operator(replay(0))).await.unwrap().into_inner();
    assert_eq!(replayed.webhook.unwrap().delivered_cursor, old_cursor, "from the oldest event held");
    let refused = operators.replay_webhook(operator(replay(1))).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange, "{refused:?}");

    // Where history stands.
    let status = f.history.get_history_status(operator(admin::GetHistoryStatusRequest {})).await.unwrap();
    let status = status.into_inner();
    assert_eq!((status.deleted_through, status.archived_through), (closing.last_index, rest.header.last_index));
    assert_eq!(status.retention_days, 2_557);
    assert_eq!(status.bytes_on_disk, history.size_on_disk().unwrap());
    let engine = history.engine_memory();
    // What the engine holds moves with its flushes; it holds something
    // once history was written and read, and never more than its budget.
    let held = status.engine_cache_bytes + status.engine_write_buffer_bytes;
    assert!(held > 0 && held <= paymesh_store::state_machine::HISTORY_MEMORY_BYTES, "{status:?}");
    assert!(engine.cache + engine.write_buffers <= paymesh_store::state_machine::HISTORY_MEMORY_BYTES);
}

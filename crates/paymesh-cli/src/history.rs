//! `paymesh history`: archive a node's history to a file, check an archive
//! and read it back offline, confirm it with the nodes, and delete what was
//! archived.
//!
//! * `export --before T --out FILE` streams the journal of the first node
//!   of the target (`paymesh.admin.v1.HistoryService.ExportHistory`) into an
//!   archive file (`paymesh_store::archive`), verifies the file, then
//!   confirms it with every node of the target (`ConfirmArchive`), each of
//!   which compares the archive's SHA-256 with its own journal's.
//! * `confirm FILE` verifies an archive and confirms it with every node of
//!   the target (for a node that was down during `export`).
//! * `verify FILE` and `get FILE --transfer ID` read the file only.
//! * `delete --through N` asks every node of the target to delete its
//!   journal through N, which each does only as far as it is archived and
//!   past the 400-day window.
//!
//! Every node archives and deletes its own history: a node given to
//! `--node` or listed in `--config`'s peers is acted on; the others are
//! not.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::StreamExt;
use paymesh_client::Region;
use paymesh_core::history::Record;
use paymesh_core::id::TransferId;
use paymesh_core::ledger::EntryId;
use paymesh_core::outcome::Outcome;
use paymesh_core::Timestamp;
pub(crate) use paymesh_harness::admin_calls::rfc3339;
use paymesh_node::history_service::HISTORY_MESSAGE_BYTES_MAX;
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::history_service_client::HistoryServiceClient;
use paymesh_store::archive::{self, ArchiveHeader, ArchiveReader, ArchiveSummary, ArchiveWriter};

use crate::Target;

/// How long one history call may take (an export of years of history
/// streams for a while).
const HISTORY_CALL_TIMEOUT: Duration = Duration::from_secs(24 * 3_600);

/// `paymesh history …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum HistoryCommand {
    /// Export the history of the first node of the target older than
    /// --before into an archive file, verify the file, and confirm it with
    /// every node of the target (which then may delete what it holds).
    Export {
        #[command(flatten)]
        target: Target,
        /// Archive the batches all of whose records are older than this:
        /// RFC 3339 (`2024-01-01T00:00:00Z`) or Unix milliseconds.
        #[arg(long, value_parser = parse_instant)]
        before: u64,
        /// The archive file to write (written under a temporary name, then
        /// renamed); refused if it exists.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an archive and confirm it with every node of the target.
    Confirm {
        #[command(flatten)]
        target: Target,
        /// The archive file.
        file: PathBuf,
    },
    /// Check an archive file: print its header, counts and digest, and OK or
    /// precisely what is wrong (exit status 1).
    Verify {
        /// The archive file.
        file: PathBuf,
    },
    /// Print, as JSON, every record of an archive that names a transfer:
    /// the finished transfer or participation, its listings, idempotency
    /// answer, ledger movements and events. Verifies the whole file.
    Get {
        /// The archive file.
        file: PathBuf,
        /// The transfer's id, `<region>:<sequence>`.
        #[arg(long)]
        transfer: String,
    },
    /// Delete every node's history through an index, as far as it is
    /// archived and older than 400 days; say what went and why each node
    /// stopped where it did. Exits with status 1 if a node stopped short.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The last log index to delete.
        #[arg(long)]
        through: u64,
    },
}

/// Run `paymesh history …`.
pub(crate) async fn run(command: HistoryCommand) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Export { target, before, out } => export(&target, before, &out).await,
        HistoryCommand::Confirm { target, file } => {
            let summary = archive::verify_file(&file)?;
            print_summary(&file, &summary);
            confirm_all(&target, &summary).await
        }
        HistoryCommand::Verify { file } => verify(&file),
        HistoryCommand::Get { file, transfer } => get(&file, &transfer),
        HistoryCommand::Delete { target, through } => delete(&target, through).await,
    }
}

// --- times --------------------------------------------------------------------

/// Unix milliseconds, or an RFC 3339 date-time (`2024-01-01T00:00:00Z`,
/// `2024-01-01T08:00:00.250+08:00`).
pub(crate) fn parse_instant(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|e| format!("{text:?}: {e}"));
    }
    rfc3339_ms(text).ok_or_else(|| {
        format!("{text:?} is neither Unix milliseconds nor an RFC 3339 date-time such as 2024-01-01T00:00:00Z")
    })
}

fn rfc3339_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter().all(u8::is_ascii_digit).then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') || b[13] != b':' {
        return None;
    }
    if b[16] != b':' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let mut at = 19;
    let mut millis = 0i64;
    if b[at] == b'.' {
        let start = at + 1;
        at = start;
        while at < b.len() && b[at].is_ascii_digit() {
            at += 1;
        }
        if at == start {
            return None;
        }
        let fraction = &text[start..at.min(start + 3)];
        millis = fraction.parse::<i64>().ok()? * 10i64.pow(3 - fraction.len() as u32);
    }
    let offset_minutes = match b.get(at..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let value = |d: &[u8]| -> Option<i64> {
                d.iter().all(u8::is_ascii_digit).then(|| d.iter().fold(0i64, |n, x| n * 10 + i64::from(x - b'0')))
            };
            let minutes = value(&[*h1, *h2])? * 60 + value(&[*m1, *m2])?;
            if *sign == b'+' {
                minutes
            } else {
                -minutes
            }
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    // Days from 1970-01-01 to the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1_000 + millis).ok()
}

// --- export and confirm -------------------------------------------------------

fn region_of(target: &Target) -> anyhow::Result<(Region, Vec<String>)> {
    let addresses = target.addresses()?;
    let region = Region::new(addresses.clone(), target.credentials()?).with_call_timeout(HISTORY_CALL_TIMEOUT);
    Ok((region, addresses))
}

fn client(region: &Region, addr: &str) -> anyhow::Result<HistoryServiceClient<paymesh_client::NodeChannel>> {
    let channel = region.channel(addr).map_err(|status| anyhow::anyhow!("{addr}: {status}"))?;
    Ok(HistoryServiceClient::new(channel).max_decoding_message_size(HISTORY_MESSAGE_BYTES_MAX))
}

/// A progress line on the terminal, or nothing when stderr is not one.
fn progress() -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

async fn export(target: &Target, before: u64, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!("{} exists; choose another --out (an archive is never overwritten)", out.display());
    }
    let (region, addresses) = region_of(target)?;
    let source = &addresses[0];
    let started = Instant::now();
    let request = wire::ExportHistoryRequest {
        through_unix_ms: i64::try_from(before).context("--before is beyond representable time")?,
    };
    let mut stream = client(&region, source)?
        .export_history(request)
        .await
        .with_context(|| format!("export from {source}"))?
        .into_inner();
    let first = stream.message().await.with_context(|| format!("export from {source}"))?;
    let header = first.and_then(|m| m.header).context("the node's export did not start with the archive's header")?;
    let header = ArchiveHeader {
        region: header.region.parse().map_err(|e| anyhow::anyhow!("the node's region {:?}: {e}", header.region))?,
        first_index: header.first_index,
        last_index: header.first_index.saturating_sub(1),
        created_at: Timestamp::from_unix_ms(u64::try_from(header.created_at_unix_ms).unwrap_or(0)),
        node_id: header.node_id,
    };
    let mut writer = ArchiveWriter::create(out, header)?;
    let bar = progress();
    let closing = loop {
        let message = match stream.next().await {
            Some(Ok(message)) => message,
            Some(Err(status)) => {
                drop(writer);
                let _ = std::fs::remove_file(partial(out));
                bail!("export from {source} failed: {status}");
            }
            None => bail!("the export from {source} ended before its last message"),
        };
        if message.done {
            break message;
        }
        let written = writer.write_frames(&message.frames)?;
        if written != message.records {
            bail!("the node said {} records, the frames hold {written}", message.records);
        }
        bar.set_message(format!(
            "{} records, {:.1} MiB, through index {}",
            writer.records(),
            mib(writer.frame_bytes()),
            message.batch_index
        ));
    };
    bar.finish_and_clear();
    let exported = started.elapsed();
    if closing.total_records != writer.records() {
        bail!("the node sent {} records, {} arrived", closing.total_records, writer.records());
    }
    let summary = writer.finish(closing.last_index)?;
    if summary.sha256.as_slice() != closing.sha256.as_slice() {
        bail!(
            "the file's SHA-256 {} differs from the node's {}",
            hex::encode(summary.sha256),
            hex::encode(&closing.sha256)
        );
    }
    // Read back from the disk before anything relies on it.
    let verified = archive::verify_file(out).context("verifying the archive just written")?;
    if verified != summary {
        bail!("the archive read back differs from what was written: {verified:?} != {summary:?}");
    }
    let total = started.elapsed();
    print_summary(out, &verified);
    println!(
        "  exported in {:.2} s ({:.0} records/s, {:.1} MiB/s), verified in {:.2} s",
        exported.as_secs_f64(),
        verified.records as f64 / exported.as_secs_f64().max(1e-9),
        mib(verified.file_bytes) / exported.as_secs_f64().max(1e-9),
        (total - exported).as_secs_f64()
    );
    println!("OK: verified");
    if verified.records == 0 && verified.header.last_index < verified.header.first_index {
        println!("nothing older than {} to archive; nothing to confirm", rfc3339(before));
        return Ok(());
    }
    confirm_all(target, &verified).await
}

/// `.NAME.partial` beside `path`, where an archive is written first.
fn partial(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

async fn confirm_all(target: &Target, summary: &ArchiveSummary) -> anyhow::Result<()> {
    let (region, addresses) = region_of(target)?;
    let request = wire::ConfirmArchiveRequest {
        first_index: summary.header.first_index,
        through_index: summary.header.last_index,
        sha256: summary.sha256.to_vec(),
    };
    let mut failed = Vec::new();
    for addr in &addresses {
        match client(&region, addr)?.confirm_archive(request.clone()).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                println!(
                    "confirmed by {addr}: its journal's {} records hash alike; archived through index {}",
                    answer.records, answer.archived_through
                );
            }
            Err(status) => {
                println!("NOT confirmed by {addr}: {}", status.message());
                failed.push(addr.clone());
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} nodes did not confirm the archive ({}); they keep their history. Once they can, run \
             `paymesh history confirm FILE` against them",
            failed.len(),
            addresses.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

// --- offline ------------------------------------------------------------------

fn print_summary(path: &Path, summary: &ArchiveSummary) {
    let h = &summary.header;
    println!("archive {}", path.display());
    println!(
        "  format version {}, region {}, exported from node {} at {}",
        archive::VERSION,
        h.region,
        h.node_id,
        rfc3339(h.created_at.unix_ms())
    );
    println!("  log indexes {}..={} (last batch with records: {})", h.first_index, h.last_index, summary.last_batch);
    println!("  records {}, frames {} bytes, file {} bytes", summary.records, summary.frame_bytes, summary.file_bytes);
    println!("  SHA-256 {}", hex::encode(summary.sha256));
}

fn verify(path: &Path) -> anyhow::Result<()> {
    let reader = ArchiveReader::open_file(path)?;
    let h = reader.header().clone();
    println!("archive {}", path.display());
    println!(
        "  header: format version {}, region {}, log indexes {}..={}, exported from node {} at {}",
        archive::VERSION,
        h.region,
        h.first_index,
        h.last_index,
        h.node_id,
        rfc3339(h.created_at.unix_ms())
    );
    match reader.verify() {
        Ok(summary) => {
            print_summary(path, &summary);
            println!("OK");
            Ok(())
        }
        Err(e) => bail!("DAMAGED: {e}"),
    }
}

/// Whether `record` names `transfer`, and as what.
fn naming(record: &Record, transfer: &TransferId) -> Option<&'static str> {
    match record {
        Record::Transfer(t) => (&t.view.id == transfer).then_some("transfer"),
        Record::Participation { transfer: t, .. } => (t == transfer).then_some("participation"),
        Record::Listed { transfer: t, .. } => (t == transfer).then_some("listed"),
        Record::Event { event, .. } => (&event.transfer == transfer).then_some("event"),
        Record::Movement(m) => {
            matches!(&m.entry, EntryId::Transfer { transfer: t, .. } if t == transfer).then_some("movement")
        }
        Record::Idempotency { record, .. } => match &record.outcome {
            Outcome::Transfer(view) => (&view.id == transfer).then_some("idempotency"),
            Outcome::Refund(view) => (&view.id == transfer || &view.original == transfer).then_some("idempotency"),
            _ => None,
        },
        Record::Refund(refund) => {
            (&refund.view.id == transfer || &refund.view.original == transfer).then_some("refund")
        }
        Record::RefundParticipation { refund, participation } => {
            (refund == transfer || &participation.prepare.original == transfer).then_some("refund participation")
        }
        Record::Refunded { transfer: t, .. } => (t == transfer).then_some("refunded"),
        Record::TopUp { .. }
        | Record::FundOut { .. }
        | Record::Operator { .. }
        | Record::Audited { .. }
        | Record::Window(_) => None,
    }
}

fn get(path: &Path, transfer: &str) -> anyhow::Result<()> {
    let id = TransferId::parse(transfer).map_err(|e| anyhow::anyhow!("--transfer {transfer:?}: {e}"))?;
    let mut reader = ArchiveReader::open_file(path)?;
    let mut found = Vec::new();
    while let Some(frame) = reader.next_frame()? {
        if let Some(kind) = naming(&frame.record, &id) {
            found.push(serde_json::json!({
                "index": frame.index,
                "seq": frame.seq,
                "kind": kind,
                "record": frame.record,
            }));
        }
    }
    let summary = reader.summary().context("the archive ended without its trailer")?;
    if found.is_empty() {
        bail!(
            "no record of transfer {id} in {} (log indexes {}..={}, {} records, verified)",
            path.display(),
            summary.header.first_index,
            summary.header.last_index,
            summary.records
        );
    }
    let answer = serde_json::json!({
        "archive": path.display().to_string(),
        "region": summary.header.region.to_string(),
        "transfer": id.to_string(),
        "records": found,
    });
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

// --- delete -------------------------------------------------------------------

fn stop_name(stop: i32) -> &'static str {
    match wire::DeletionStop::try_from(stop) {
        Ok(wire::DeletionStop::Requested) => "the index asked for",
        Ok(wire::DeletionStop::NotArchived) => "not archived beyond",
        Ok(wire::DeletionStop::Retention) => "within the retention window",
        Ok(wire::DeletionStop::End) => "end of history",
        _ => "unknown",
    }
}

async fn delete(target: &Target, through: u64) -> anyhow::Result<()> {
    let (region, addresses) = region_of(target)?;
    let mut short = Vec::new();
    for addr in &addresses {
        let request = wire::DeleteHistoryRequest { through_index: through };
        match client(&region, addr)?.delete_history(request).await {
            Ok(answer) => {
                let a = answer.into_inner();
                println!(
                    "{addr}: deleted {} records; history deleted through {} (was {}), stopped: {}; {}",
                    a.deleted_records,
                    a.deleted_through,
                    a.deleted_before,
                    stop_name(a.stop),
                    a.explanation
                );
                if a.deleted_through < through {
                    short.push(addr.clone());
                }
            }
            Err(status) => {
                println!("{addr}: not deleted: {}", status.message());
                short.push(addr.clone());
            }
        }
    }
    if !short.is_empty() {
        bail!("history is not deleted through {through} on {}", short.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_unix_milliseconds_or_rfc_3339() {
        assert_eq!(parse_instant("1700000000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_instant("2024-01-01T00:00:00Z"), Ok(1_704_067_200_000));
        assert_eq!(parse_instant("2024-01-01T08:00:00.25+08:00"), Ok(1_704_067_200_250));
        assert_eq!(parse_instant("2023-12-31T19:00:00-05:00"), Ok(1_704_067_200_000));
        assert_eq!(parse_instant("2024-02-29T12:00:00.123456Z"), Ok(1_709_208_000_123));
        for bad in
            ["", "yesterday", "2023-02-29T00:00:00Z", "2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z"]
        {
            assert!(parse_instant(bad).is_err(), "{bad}");
        }
        for ms in [0, 1_704_067_200_250, 1_709_208_000_123, 4_102_444_799_999] {
            assert_eq!(parse_instant(&rfc3339(ms)), Ok(ms));
        }
        assert_eq!(rfc3339(1_704_067_200_250), "2024-01-01T00:00:00.250Z");
    }
}

//! Settlement windows from outside: a region pair's cross-check, and a
//! window printed for people. The `paymesh settlement` commands, the demo
//! and the tests share them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use anyhow::{bail, Context};
use paymesh_client::Region;
use paymesh_proto::admin::v1 as wire;
use rust_decimal::Decimal;

use crate::admin_calls::{call_region, rfc3339};
use crate::history::{Amount, ObservedNet, ObservedPair, ObservedWindow, RegionObservation, SettlementObservation};
use crate::local::LocalRegion;

/// How far before a window opened the other region's windows are read for
/// it: decisions cannot arrive before their window opened, but the two
/// regions' clocks may disagree by this much.
const CLOCK_SKEW_MARGIN_MS: i64 = 10 * 60 * 1000;

/// Where a pair's figures for a window stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Both regions hold the same figures.
    Agree,
    /// Commit decisions of the window are still on their way.
    InFlight(u64),
    /// Every decision arrived, and the figures differ.
    Differ,
}

/// One direction of a pair's cross-check: what `from` committed towards
/// `to` in its window, and what `to` posted for it.
#[derive(Clone, Debug)]
pub struct PairCheck {
    /// The coordinating region.
    pub from: String,
    /// The other region.
    pub to: String,
    /// `from`'s window.
    pub window: u64,
    /// `from`'s figures.
    pub sent: Vec<wire::Tally>,
    /// `to`'s figures for the same window.
    pub received: Vec<wire::Tally>,
    /// The verdict.
    pub verdict: Verdict,
}

impl PairCheck {
    /// One line for people.
    pub fn line(&self) -> String {
        let (count, source, destination) = totals(&self.sent);
        let verdict = match &self.verdict {
            Verdict::Agree => "agree".to_owned(),
            Verdict::InFlight(n) => format!("{n} decisions still on their way"),
            Verdict::Differ => format!("DIFFER: {} has {}", self.to, describe(&self.received)),
        };
        format!(
            "{} window {} -> {}: {count} committed ({source} / {destination}), {verdict}",
            self.from, self.window, self.to
        )
    }
}

fn totals(tallies: &[wire::Tally]) -> (u64, String, String) {
    let count = tallies.iter().map(|t| t.count).sum();
    (count, describe_amounts(tallies, true), describe_amounts(tallies, false))
}

fn describe_amounts(tallies: &[wire::Tally], source: bool) -> String {
    let amounts: Vec<String> = tallies
        .iter()
        .filter_map(|t| if source { t.source_amount.as_ref() } else { t.destination_amount.as_ref() })
        .map(|m| format!("{} {}", m.amount, m.currency))
        .collect();
    if amounts.is_empty() {
        "nothing".into()
    } else {
        amounts.join(" + ")
    }
}

fn describe(tallies: &[wire::Tally]) -> String {
    let (count, source, destination) = totals(tallies);
    format!("{count} ({source} / {destination})")
}

/// Tallies in one order, for comparison.
fn sorted(mut tallies: Vec<wire::Tally>) -> Vec<wire::Tally> {
    tallies.sort_by(|a, b| {
        (&a.flow, &a.source_currency, &a.destination_currency).cmp(&(
            &b.flow,
            &b.source_currency,
            &b.destination_currency,
        ))
    });
    tallies
}

/// Read a window of `region`: 0 for the open one.
pub async fn window(region: &Region, number: u64) -> anyhow::Result<wire::SettlementWindow> {
    let answer = call_region(region, |mut c| async move {
        c.get_settlement_window(wire::GetSettlementWindowRequest { number }).await
    })
    .await?;
    answer.window.context("the node answered without the window")
}

/// Cross-check `from`'s closed window `number` towards `to`: `from`'s
/// `sent` figures against what `to` posted for that window.
pub async fn cross_check(
    (from, from_name): (&Region, &str),
    (to, to_name): (&Region, &str),
    number: u64,
) -> anyhow::Result<PairCheck> {
    let closed = window(from, number).await?;
    if closed.closed_unix_ms == 0 {
        bail!("{from_name}'s window {number} is still open: close it first");
    }
    let (sent, in_flight) = closed
        .sent
        .iter()
        .find(|r| r.region == to_name)
        .map_or((Vec::new(), 0), |r| (r.tallies.clone(), r.decisions_in_flight));
    let request = wire::GetReceivedTalliesRequest {
        from_region: from_name.to_owned(),
        window: number,
        not_before_unix_ms: (closed.opened_unix_ms - CLOCK_SKEW_MARGIN_MS).max(0),
    };
    let received = call_region(to, |mut c| {
        let request = request.clone();
        async move { c.get_received_tallies(request).await }
    })
    .await?
    .tallies;
    let (sent, received) = (sorted(sent), sorted(received));
    let verdict = match (sent == received, in_flight) {
        (true, _) => Verdict::Agree,
        (false, 0) => Verdict::Differ,
        (false, n) => Verdict::InFlight(n),
    };
    Ok(PairCheck { from: from_name.to_owned(), to: to_name.to_owned(), window: number, sent, received, verdict })
}

fn instant(ms: i64) -> String {
    rfc3339(u64::try_from(ms).unwrap_or(0))
}

/// A window printed for people: its span, each account's net and whether
/// it was settled, and its cross-border figures.
pub fn render(region: &str, window: &wire::SettlementWindow) -> String {
    let mut out = String::new();
    let state = if window.closed_unix_ms == 0 {
        "open".to_owned()
    } else {
        format!("closed {}", instant(window.closed_unix_ms))
    };
    let opened = match window.opened_unix_ms {
        0 => "since the region began".to_owned(),
        ms => format!("opened {}", instant(ms)),
    };
    let title = format!("{region} settlement window {} ({state}, {opened})", window.number);
    let _ = writeln!(out, "{}", title.trim_start());
    if window.positions.is_empty() {
        let _ = writeln!(out, "  no account moved");
    }
    for p in &window.positions {
        let net = p.net.as_ref().map_or_else(String::new, |m| format!("{} {}", m.amount, m.currency));
        let settled = if p.settled { format!("  settled ({})", p.settlement_reference) } else { String::new() };
        let _ = writeln!(out, "  {:<40} {net:>24}{settled}", p.account);
    }
    for r in &window.sent {
        let in_flight =
            if r.decisions_in_flight > 0 { format!(", {} on their way", r.decisions_in_flight) } else { String::new() };
        let _ = writeln!(out, "  sent to {}: {}{in_flight}", r.region, describe(&r.tallies));
    }
    for r in &window.received {
        let _ = writeln!(out, "  received from {} (its window {}): {}", r.region, r.window, describe(&r.tallies));
    }
    out
}

/// A window as the observation keeps it.
pub fn observed_window(window: &wire::SettlementWindow) -> ObservedWindow {
    let positions = window
        .positions
        .iter()
        .filter_map(|p| {
            let net = p.net.as_ref()?;
            let amount = Amount { amount: net.amount.parse().ok()?, currency: net.currency.clone() };
            Some(ObservedNet { account: p.account.clone(), net: amount })
        })
        .collect();
    ObservedWindow { number: window.number, closed: window.closed_unix_ms != 0, positions }
}

/// Where the partners' nets of a region's windows, summed, differ from
/// what its committed transfers and refunds moved (read through the
/// partner API, [`crate::check::posted_by_transfers`]): one line each. The
/// windows must be every window since the region began, so that together
/// they cover all its payments.
pub fn nets_against_transfers(region: &str, held: &RegionObservation, windows: &[ObservedWindow]) -> Vec<String> {
    let mut nets: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for position in windows.iter().flat_map(|w| &w.positions) {
        let Some(("partner", rest)) = position.account.split_once(':') else { continue };
        let Some((partner, _)) = rest.rsplit_once(':') else { continue };
        *nets.entry((partner.to_owned(), position.net.currency.clone())).or_default() += position.net.amount;
    }
    nets.retain(|_, amount| !amount.is_zero());
    let moved = crate::check::posted_by_transfers(region, held);
    let keys: BTreeSet<&(String, String)> = nets.keys().chain(moved.keys()).collect();
    keys.into_iter()
        .filter_map(|key @ (partner, currency)| {
            let window = nets.get(key).copied().unwrap_or_default();
            let transfers = moved.get(key).copied().unwrap_or_default();
            (window != transfers).then(|| {
                format!("{region}: {partner}'s windows add up to {window} {currency}, its transfers and refunds to {transfers}")
            })
        })
        .collect()
}

/// Where a window's nets do not sum to zero per currency: one line each.
pub fn unbalanced(region: &str, window: &ObservedWindow) -> Vec<String> {
    let mut sums: BTreeMap<&str, Decimal> = BTreeMap::new();
    for position in &window.positions {
        *sums.entry(position.net.currency.as_str()).or_default() += position.net.amount;
    }
    sums.into_iter()
        .filter(|(_, sum)| !sum.is_zero())
        .map(|(currency, sum)| format!("{region}'s window {}: {currency} nets sum to {sum}", window.number))
        .collect()
}

/// Each region's operator client, by name.
pub fn operators(regions: &[(&str, &LocalRegion)]) -> anyhow::Result<Vec<(String, Region)>> {
    regions.iter().map(|(name, region)| Ok(((*name).to_owned(), region.sdk(&region.operator_stem())?))).collect()
}

/// Close the open settlement window of each region: the number closed, or
/// why not, per region.
pub async fn close_all(operators: &[(String, Region)]) -> Vec<(String, anyhow::Result<u64>)> {
    let mut closed = Vec::new();
    for (name, operator) in operators {
        let result = async {
            let answer = call_region(operator, |mut c| async move {
                c.close_settlement_window(wire::CloseSettlementWindowRequest {}).await
            })
            .await?;
            Ok(answer.window.context("the node closed the window but did not return it")?.number)
        }
        .await;
        closed.push((name.clone(), result));
    }
    closed
}

/// Close every region's window once more (so that every payment is in a
/// closed window), read each region's windows since it began, and
/// cross-check every window of every region with every other region.
pub async fn gather(operators: &[(String, Region)]) -> anyhow::Result<SettlementObservation> {
    let mut observation = SettlementObservation::default();
    let mut read = Vec::new();
    for ((name, closed), (_, operator)) in close_all(operators).await.into_iter().zip(operators) {
        let last = closed.with_context(|| format!("closing {name}'s settlement window"))?;
        let mut windows = Vec::new();
        for number in 1..=last {
            windows.push(window(operator, number).await?);
        }
        read.push((name, operator, windows));
    }
    for (from, from_region, windows) in &read {
        for (to, to_region, _) in read.iter().filter(|(to, _, _)| to != from) {
            for w in windows {
                let pair = cross_check((from_region, from), (to_region, to), w.number).await?;
                observation.pairs.push(ObservedPair {
                    from: from.clone(),
                    to: to.clone(),
                    window: w.number,
                    agree: pair.verdict == Verdict::Agree,
                    in_flight: match pair.verdict {
                        Verdict::InFlight(n) => n,
                        _ => 0,
                    },
                    line: pair.line(),
                });
            }
        }
        observation.windows.insert(from.clone(), windows.iter().map(observed_window).collect());
    }
    Ok(observation)
}

/// A reconciliation file of `partner` for closed window `window`, from its
/// home region: the file's name and bytes.
pub async fn file(
    region: &Region,
    window: u64,
    partner: &str,
    kind: wire::SettlementFileKind,
) -> anyhow::Result<(String, Vec<u8>)> {
    use futures::StreamExt as _;
    let request = wire::GetSettlementFileRequest { window, partner_id: partner.to_owned(), kind: kind as i32 };
    let mut stream = call_region(region, |mut c| {
        let request = request.clone();
        async move { c.get_settlement_file(request).await }
    })
    .await?;
    let (mut name, mut bytes) = (String::new(), Vec::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("reading the file's chunks")?;
        if name.is_empty() {
            name = chunk.file_name;
        }
        bytes.extend_from_slice(&chunk.data);
    }
    if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
        bail!("the node sent a file without a plain name ({name:?})");
    }
    Ok((name, bytes))
}

/// Whether `error` is a node's NOT_FOUND.
fn not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<paymesh_client::ClientError>()
        .and_then(paymesh_client::ClientError::status)
        .is_some_and(|s| s.code() == tonic::Code::NotFound)
}

/// Every kind of reconciliation file.
pub const FILE_KINDS: [wire::SettlementFileKind; 4] = [
    wire::SettlementFileKind::Transactions,
    wire::SettlementFileKind::Summary,
    wire::SettlementFileKind::Camt053,
    wire::SettlementFileKind::Pacs008,
];

/// Download every kind of file of each partner (`(region, partner)`) for
/// each of `windows` into `<the region's directory>/settlement-files/`,
/// where the data-locality scan of the region's files reads them; how many
/// files were written.
pub async fn download_files(
    regions: &[(&str, &LocalRegion)],
    partners: &[(&str, &str)],
    windows: &BTreeMap<String, Vec<u64>>,
) -> anyhow::Result<usize> {
    let mut written = 0;
    for (name, region) in regions {
        let operator = region.sdk(&region.operator_stem())?;
        let dir = region.dir().join("settlement-files");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for (_, partner) in partners.iter().filter(|(home, _)| home == name) {
            for number in windows.get(*name).into_iter().flatten() {
                for kind in FILE_KINDS {
                    let (file_name, bytes) = match file(&operator, *number, partner, kind).await {
                        Ok(file) => file,
                        // A partner with no cross-border payment in the
                        // window has no pacs.008 (it needs one at least).
                        Err(e) if kind == wire::SettlementFileKind::Pacs008 && not_found(&e) => continue,
                        Err(e) => return Err(e),
                    };
                    std::fs::write(dir.join(&file_name), bytes).with_context(|| format!("writing {file_name}"))?;
                    written += 1;
                }
            }
        }
    }
    Ok(written)
}

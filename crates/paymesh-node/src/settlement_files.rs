//! Reconciliation files of a closed settlement window, per partner, written
//! by the region that holds the partner's data (`AdminService.
//! GetSettlementFile`, `paymesh settlement file`):
//!
//! * `transactions` — CSV, one row per posted movement of the partner's
//!   position in the window (payments, refunds, and the top-ups, fund-outs
//!   and settlements between them), header [`TRANSACTIONS_HEADER`];
//! * `summary` — CSV, one row: counts and totals, whose `payments_net`
//!   equals the window's net of the partner ([`SUMMARY_HEADER`]);
//! * `camt053` — the same movements as an ISO 20022 bank-to-customer
//!   statement, `camt.053.001.08`;
//! * `pacs008` — the partner's cross-border payments posted in the window as
//!   ISO 20022 FI-to-FI customer credit transfers, `pacs.008.001.08`. The
//!   debtor's name is the payer's only in the payer's own region, which is
//!   the only one that holds it; a payee region's file names the payer by
//!   its token.
//!
//! A window's movements are those between two closes in the log: after the
//! position of the previous window's close, before the position of its own
//! (`History::window_closed_at`), so a movement applied in the same
//! millisecond as a close is in the window the log puts it in.

use std::fmt::Write as _;

use paymesh_core::history::{Movement, MovementKind, Recall};
use paymesh_core::id::{PartnerId, TransferId};
use paymesh_core::ledger::{AccountId, EntryId, Leg};
use paymesh_core::settlement::{units_to_wire, SettlementWindow};
use paymesh_core::state::{Participation, Transfer};
use paymesh_core::{Currency, Timestamp};
use paymesh_store::History;

use crate::convert;

/// The most movements one file holds: a partner with more in one window
/// needs windows closed more often (each file is built in memory).
pub const FILE_ENTRIES_MAX: usize = 200_000;

/// Movements read from history per page.
const PAGE: usize = 1_000;

/// The transactions file's header.
pub const TRANSACTIONS_HEADER: &str =
    "window,partner,row,entry,transfer,kind,direction,amount,currency,counterparty,booked_at,balance_after";

/// The summary file's header.
pub const SUMMARY_HEADER: &str = "window,partner,currency,opened_at,closed_at,entries,payments_debited,\
payments_credited,payments_net,other_net,window_net,opening_balance,closing_balance,settled,settlement_reference";

/// Which file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// The CSV of movements.
    Transactions,
    /// The CSV summary.
    Summary,
    /// camt.053.001.08.
    Camt053,
    /// pacs.008.001.08.
    Pacs008,
}

impl FileKind {
    /// The file's name for window `window` of `partner`, and its media type.
    pub fn name(self, region: &str, window: u64, partner: &PartnerId) -> (String, &'static str) {
        let stem = format!("{region}-window-{window}-{partner}");
        match self {
            FileKind::Transactions => (format!("{stem}-transactions.csv"), "text/csv"),
            FileKind::Summary => (format!("{stem}-summary.csv"), "text/csv"),
            FileKind::Camt053 => (format!("{stem}.camt.053.xml"), "application/xml"),
            FileKind::Pacs008 => (format!("{stem}.pacs.008.xml"), "application/xml"),
        }
    }
}

/// Why a file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The window is not closed, or history no longer holds its close.
    #[error("{0}")]
    NotFound(String),
    /// More movements than one file holds.
    #[error("{0}")]
    TooLarge(String),
    /// History could not be read.
    #[error("reading history: {0}")]
    History(String),
}

/// One posted movement of the partner's position, as the files show it.
#[derive(Clone, Debug)]
pub struct Line {
    /// The movement.
    pub movement: Movement,
    /// Credited (true) or debited.
    pub credit: bool,
    /// The position's posted balance after it, in minor units.
    pub balance_after: i128,
}

impl Line {
    fn signed(&self) -> i128 {
        let units = i128::from(self.movement.amount.units());
        if self.credit {
            units
        } else {
            -units
        }
    }

    /// A payment's or a refund's leg (what the window's net counts).
    fn is_payment(&self) -> bool {
        matches!(self.movement.entry, EntryId::Transfer { .. })
    }

    fn kind(&self) -> &'static str {
        match &self.movement.entry {
            EntryId::Transfer { leg: Leg::Refund | Leg::RefundPayout, .. } => "refund",
            EntryId::Transfer { .. } => "payment",
            EntryId::TopUp(_) => "top-up",
            EntryId::FundOut(_) => "fund-out",
            EntryId::Settled { .. } => "settlement",
        }
    }

    fn transfer(&self) -> Option<&TransferId> {
        match &self.movement.entry {
            EntryId::Transfer { transfer, .. } => Some(transfer),
            _ => None,
        }
    }

    fn counterparty(&self) -> &AccountId {
        if self.credit {
            &self.movement.debit
        } else {
            &self.movement.credit
        }
    }
}

/// The partner's posted movements in closed window `window`.
pub fn lines(history: &History, window: &SettlementWindow, account: &AccountId) -> Result<Vec<Line>, FileError> {
    let Some(closed_at) = window.closed_at else {
        return Err(FileError::NotFound(format!("WindowNotClosed: window {} is open", window.number)));
    };
    let read = |e: paymesh_store::HistoryError| FileError::History(e.to_string());
    let closed = history.window_closed_at(window.number).map_err(read)?.ok_or_else(|| {
        FileError::NotFound(format!("window {}'s close is no longer in this node's history", window.number))
    })?;
    let opened = match window.number {
        1 => (0, 0),
        n => history.window_closed_at(n - 1).map_err(read)?.unwrap_or((0, 0)),
    };
    let mut lines = Vec::new();
    let mut after = None;
    loop {
        let page = history.statement(account, window.opened_at, closed_at.plus_ms(1), after, PAGE).map_err(read)?;
        let done = page.len() < PAGE;
        for (token, movement) in page {
            after = Some(token);
            let at = (token.index, token.seq);
            let posted = matches!(movement.kind, MovementKind::Post | MovementKind::PostPending);
            if !posted || at <= opened || at >= closed {
                continue;
            }
            if lines.len() == FILE_ENTRIES_MAX {
                return Err(FileError::TooLarge(format!(
                    "window {} holds more than {FILE_ENTRIES_MAX} movements of {account}: close windows more often",
                    window.number
                )));
            }
            let credit = movement.credit == *account;
            let after_sums = if credit { movement.credit_after } else { movement.debit_after };
            lines.push(Line { credit, balance_after: after_sums.net_posted(), movement });
        }
        if done {
            return Ok(lines);
        }
    }
}

fn rfc3339(at: Timestamp) -> String {
    at.to_rfc3339()
}

fn date(at: Timestamp) -> String {
    rfc3339(at)[..10].to_owned()
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

/// XML character data.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The transactions CSV.
pub fn transactions(window: u64, partner: &PartnerId, lines: &[Line]) -> String {
    let mut out = String::with_capacity(128 * (lines.len() + 1));
    out.push_str(TRANSACTIONS_HEADER);
    out.push('\n');
    for (row, line) in lines.iter().enumerate() {
        let m = &line.movement;
        let currency = m.amount.currency();
        let _ = writeln!(
            out,
            "{window},{partner},{},{},{},{},{},{},{},{},{},{}",
            row + 1,
            csv(&convert::entry_id_out(&m.entry)),
            line.transfer().map(ToString::to_string).unwrap_or_default(),
            line.kind(),
            if line.credit { "credit" } else { "debit" },
            m.amount.to_wire(),
            currency.code(),
            csv(&line.counterparty().to_string()),
            rfc3339(m.at),
            units_to_wire(line.balance_after, currency),
        );
    }
    out
}

/// What the summary and the statement add up.
struct Totals {
    entries: usize,
    debited: i128,
    credited: i128,
    other: i128,
    debits: (usize, i128),
    credits: (usize, i128),
}

fn totals(lines: &[Line]) -> Totals {
    let mut t = Totals { entries: lines.len(), debited: 0, credited: 0, other: 0, debits: (0, 0), credits: (0, 0) };
    for line in lines {
        let units = i128::from(line.movement.amount.units());
        if line.credit {
            t.credits = (t.credits.0 + 1, t.credits.1 + units);
        } else {
            t.debits = (t.debits.0 + 1, t.debits.1 + units);
        }
        match (line.is_payment(), line.credit) {
            (true, true) => t.credited += units,
            (true, false) => t.debited += units,
            (false, _) => t.other += line.signed(),
        }
    }
    t
}

/// The account's posted balances when the window opened and closed, from
/// its record.
fn balances(window: &SettlementWindow, account: &AccountId) -> (i128, i128) {
    let at = |balances: &std::collections::BTreeMap<AccountId, i128>| balances.get(account).copied().unwrap_or(0);
    (at(&window.opening), at(&window.closing))
}

/// The summary CSV: its `payments_net` is the window's net of the
/// partner, which it also states (`window_net`), so a reader checks one
/// against the other; and the opening balance plus both nets is the
/// closing balance (both from the window's record, not from the lines).
pub fn summary(window: &SettlementWindow, partner: &PartnerId, account: &AccountId, lines: &[Line]) -> String {
    let t = totals(lines);
    let currency = account.currency;
    let money = |units: i128| units_to_wire(units, currency);
    let position = window.position(account);
    let window_net = position.map_or(0, |p| p.net);
    let settled = position.and_then(|p| p.settled.as_ref());
    let (opening, closing) = balances(window, account);
    format!(
        "{SUMMARY_HEADER}\n{},{partner},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
        window.number,
        currency.code(),
        rfc3339(window.opened_at),
        window.closed_at.map(rfc3339).unwrap_or_default(),
        t.entries,
        money(t.debited),
        money(t.credited),
        money(t.credited - t.debited),
        money(t.other),
        money(window_net),
        money(opening),
        money(closing),
        settled.is_some(),
        csv(&settled.map(|s| s.reference.to_string()).unwrap_or_default()),
    )
}

/// An amount as ISO 20022 writes it: the magnitude, with the sign apart.
fn iso_amount(units: i128, currency: Currency) -> String {
    units_to_wire(units.abs(), currency)
}

fn credit_debit(units: i128) -> &'static str {
    if units < 0 {
        "DBIT"
    } else {
        "CRDT"
    }
}

/// A reference of at most 35 characters (ISO 20022's `Max35Text`), or
/// none when `text` is longer.
fn max35(text: &str) -> Option<&str> {
    (text.chars().count() <= 35).then_some(text)
}

/// The first 35 characters of `text`, for an identifier of ours that is
/// only ever that long in practice.
fn first35(text: &str) -> String {
    text.chars().take(35).collect()
}

/// The camt.053.001.08 statement of the partner's position over the window.
pub fn camt053(
    region: &str,
    window: &SettlementWindow,
    partner: &PartnerId,
    account: &AccountId,
    lines: &[Line],
    now: Timestamp,
) -> String {
    let t = totals(lines);
    let currency = account.currency;
    let ccy = currency.code();
    let id = format!("{region}-w{}-{partner}", window.number);
    let closed_at = window.closed_at.unwrap_or(now);
    let mut out = String::with_capacity(600 * (lines.len() + 2));
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:camt.053.001.08\">\
<BkToCstmrStmt><GrpHdr><MsgId>{}</MsgId><CreDtTm>{}</CreDtTm></GrpHdr><Stmt><Id>{}</Id>\
<ElctrncSeqNb>{}</ElctrncSeqNb><CreDtTm>{}</CreDtTm><FrToDt><FrDtTm>{}</FrDtTm><ToDtTm>{}</ToDtTm></FrToDt>\
<Acct><Id><Othr><Id>{}</Id></Othr></Id><Ccy>{ccy}</Ccy><Nm>{}</Nm></Acct>",
        xml(&first35(&id)),
        rfc3339(now),
        xml(&first35(&id)),
        window.number,
        rfc3339(now),
        rfc3339(window.opened_at),
        rfc3339(closed_at),
        xml(partner.as_str()),
        xml(&account.to_string()),
    );
    let (opening, closing) = balances(window, account);
    for (code, units, at) in [("OPBD", opening, window.opened_at), ("CLBD", closing, closed_at)] {
        let _ = write!(
            out,
            "<Bal><Tp><CdOrPrtry><Cd>{code}</Cd></CdOrPrtry></Tp><Amt Ccy=\"{ccy}\">{}</Amt><CdtDbtInd>{}</CdtDbtInd>\
<Dt><DtTm>{}</DtTm></Dt></Bal>",
            iso_amount(units, currency),
            credit_debit(units),
            rfc3339(at)
        );
    }
    let _ = write!(
        out,
        "<TxsSummry><TtlNtries><NbOfNtries>{}</NbOfNtries></TtlNtries><TtlCdtNtries><NbOfNtries>{}</NbOfNtries>\
<Sum>{}</Sum></TtlCdtNtries><TtlDbtNtries><NbOfNtries>{}</NbOfNtries><Sum>{}</Sum></TtlDbtNtries></TxsSummry>",
        t.entries,
        t.credits.0,
        units_to_wire(t.credits.1, currency),
        t.debits.0,
        units_to_wire(t.debits.1, currency),
    );
    for (row, line) in lines.iter().enumerate() {
        let m = &line.movement;
        let reference = line.transfer().map(ToString::to_string);
        let end_to_end = reference.as_deref().and_then(max35);
        let _ = write!(
            out,
            "<Ntry><NtryRef>{}</NtryRef><Amt Ccy=\"{ccy}\">{}</Amt><CdtDbtInd>{}</CdtDbtInd><Sts><Cd>BOOK</Cd></Sts>\
<BookgDt><DtTm>{}</DtTm></BookgDt><ValDt><DtTm>{}</DtTm></ValDt><BkTxCd><Prtry><Cd>{}</Cd>\
<Issr>paymesh</Issr></Prtry></BkTxCd><NtryDtls><TxDtls>",
            row + 1,
            m.amount.to_wire(),
            if line.credit { "CRDT" } else { "DBIT" },
            rfc3339(m.at),
            rfc3339(m.at),
            line.kind(),
        );
        if let Some(end_to_end) = end_to_end {
            let _ = write!(out, "<Refs><EndToEndId>{}</EndToEndId></Refs>", xml(end_to_end));
        }
        let _ = write!(
            out,
            "<AddtlTxInf>{}</AddtlTxInf></TxDtls></NtryDtls></Ntry>",
            xml(&format!("{} with {}", convert::entry_id_out(&m.entry), line.counterparty()))
        );
    }
    out.push_str("</Stmt></BkToCstmrStmt></Document>\n");
    out
}

/// One cross-border payment of the partner, as this region holds it.
#[derive(Debug)]
pub enum Crossing {
    /// Coordinated here: the partner paid it, and this region holds the
    /// payer's details.
    Paid(Transfer),
    /// Coordinated by the payer's region; the partner was paid.
    Received(Participation),
}

/// The partner's cross-border payments posted in the window (their payer's
/// principal leg here, or their payee's payout), from history.
pub fn crossings(lines: &[Line], recall: &dyn Recall) -> Vec<Crossing> {
    let mut found = Vec::new();
    for line in lines {
        match &line.movement.entry {
            EntryId::Transfer { transfer, leg: Leg::Principal } => {
                if let Some(t) = recall.transfer(transfer).filter(|t| !t.view.corridor.is_same_region()) {
                    found.push(Crossing::Paid(t));
                }
            }
            EntryId::Transfer { transfer, leg: Leg::Payout } => {
                if let Some(p) = recall.participation(transfer).filter(|p| p.prepare.is_some()) {
                    found.push(Crossing::Received(p));
                }
            }
            _ => {}
        }
    }
    found
}

/// The pacs.008.001.08 of the partner's cross-border payments in the window.
pub fn pacs008(
    region: &str,
    window: &SettlementWindow,
    partner: &PartnerId,
    crossings: &[Crossing],
    now: Timestamp,
) -> String {
    let id = format!("{region}-w{}-{partner}-x", window.number);
    let mut out = String::with_capacity(1_200 * (crossings.len() + 1));
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Document xmlns=\"urn:iso:std:iso:20022:tech:xsd:pacs.008.001.08\">\
<FIToFICstmrCdtTrf><GrpHdr><MsgId>{}</MsgId><CreDtTm>{}</CreDtTm><NbOfTxs>{}</NbOfTxs>\
<SttlmInf><SttlmMtd>CLRG</SttlmMtd></SttlmInf></GrpHdr>",
        xml(&first35(&id)),
        rfc3339(now),
        crossings.len(),
    );
    for crossing in crossings {
        // Both sides: the transfer, its amounts, its rate, the parties.
        let (transfer, source, destination, rate, payer_partner, payee_partner, merchant, debtor, at) = match crossing {
            Crossing::Paid(t) => {
                let v = &t.view;
                (
                    v.id.clone(),
                    v.priced.source,
                    v.priced.destination,
                    v.priced.rate.to_string(),
                    v.partner.to_string(),
                    v.payee.partner.to_string(),
                    v.payee.merchant.to_string(),
                    Debtor::Named(t.payer.name.as_str().to_owned(), t.payer.account.as_str().to_owned()),
                    v.updated_at,
                )
            }
            Crossing::Received(p) => {
                let m = p.prepare.as_ref().expect("a crossing received was prepared");
                (
                    m.transfer.clone(),
                    m.source,
                    m.destination,
                    m.rate.to_string(),
                    format!("{}", m.corridor.source_region),
                    m.payee.to_string(),
                    m.merchant.to_string(),
                    Debtor::Token(m.payer_token.to_string()),
                    p.updated_at,
                )
            }
        };
        let id = transfer.to_string();
        let end_to_end = max35(&id).unwrap_or("NOTPROVIDED");
        let _ = write!(
            out,
            "<CdtTrfTxInf><PmtId><EndToEndId>{}</EndToEndId></PmtId><IntrBkSttlmAmt Ccy=\"{}\">{}</IntrBkSttlmAmt>\
<IntrBkSttlmDt>{}</IntrBkSttlmDt><InstdAmt Ccy=\"{}\">{}</InstdAmt><XchgRate>{}</XchgRate><ChrgBr>DEBT</ChrgBr>",
            xml(end_to_end),
            destination.currency().code(),
            destination.to_wire(),
            date(at),
            source.currency().code(),
            source.to_wire(),
            xml(&rate),
        );
        match &debtor {
            Debtor::Named(name, account) => {
                let _ = write!(
                    out,
                    "<Dbtr><Nm>{}</Nm></Dbtr><DbtrAcct><Id><Othr><Id>{}</Id></Othr></Id></DbtrAcct>",
                    xml(name),
                    xml(&first35(account))
                );
            }
            Debtor::Token(token) => {
                let _ = write!(out, "<Dbtr><Id><PrvtId><Othr><Id>{}</Id></Othr></PrvtId></Id></Dbtr>", xml(token));
            }
        }
        let _ = write!(
            out,
            "<DbtrAgt><FinInstnId><Nm>{}</Nm></FinInstnId></DbtrAgt><CdtrAgt><FinInstnId><Nm>{}</Nm></FinInstnId>\
</CdtrAgt><Cdtr><Nm>{}</Nm></Cdtr><RmtInf><Ustrd>{}</Ustrd></RmtInf></CdtTrfTxInf>",
            xml(&payer_partner),
            xml(&payee_partner),
            xml(&merchant),
            xml(&format!("paymesh transfer {id}")),
        );
    }
    out.push_str("</FIToFICstmrCdtTrf></Document>\n");
    out
}

/// Who paid, as this region may name them.
enum Debtor {
    /// The payer's name and account: only in the payer's own region.
    Named(String, String),
    /// The payer's token: everywhere else.
    Token(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_only_when_they_must_be() {
        assert_eq!(csv("plain"), "plain");
        assert_eq!(csv("a,b"), "\"a,b\"");
        assert_eq!(csv("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(xml("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
        assert_eq!(max35("us-west:1"), Some("us-west:1"));
        assert_eq!(max35(&"x".repeat(36)), None);
    }
}

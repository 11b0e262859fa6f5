//! The operator's configuration commands: `paymesh partner`, `corridor`,
//! `fx`, `position`, `route` and `ledger`. Each is one call of
//! `paymesh.admin.v1` on the region's leader (followers redirect), with the
//! operator certificate of [`Target`].
//!
//! Amounts are decimal strings in the currency the command names (a
//! corridor's amounts and fees are in its source currency); the node checks
//! every field and its answer is printed as it is. A refused write exits
//! with status 1 and names the reason.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use anyhow::{bail, Context};
use paymesh_client::{NodeChannel, Region};
use paymesh_harness::admin_calls::{accepted, call_region, money, unix_ms_now};
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::admin_service_client::AdminServiceClient;
use paymesh_proto::common::v1 as common;

use crate::Target;

/// Longest validity `fx set --valid-for` accepts; the node allows 24 hours.
const RATE_VALIDITY_MAX: Duration = Duration::from_secs(24 * 3600);
/// Rows asked for per page by the list commands.
const LIST_PAGE: u32 = 500;
/// Pages a list command reads before it stops (500,000 rows).
const LIST_PAGES_MAX: usize = 1_000;

/// What a partner may do.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Role {
    /// Sends transfers (a wallet).
    Payer,
    /// Receives transfers (a merchant acquirer).
    Payee,
    /// Both.
    Both,
}

/// A corridor's end: `region:CUR`, for example `us-west:USD`.
#[derive(Clone, Debug)]
pub(crate) struct End {
    region: String,
    currency: String,
}

impl std::str::FromStr for End {
    type Err = String;

    fn from_str(s: &str) -> Result<End, String> {
        let (region, currency) =
            s.split_once(':').ok_or_else(|| format!("{s:?} is not region:CURRENCY, for example us-west:USD"))?;
        Ok(End { region: region.to_owned(), currency: currency.to_owned() })
    }
}

/// Which corridor: its source and destination ends.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct CorridorArg {
    /// The source (payer's) region and currency, `region:CUR`.
    #[arg(long)]
    from: End,
    /// The destination (payee's) region and currency, `region:CUR`.
    #[arg(long)]
    to: End,
}

impl CorridorArg {
    fn wire(&self) -> common::CorridorId {
        common::CorridorId {
            source_currency: self.from.currency.clone(),
            source_region: self.from.region.clone(),
            destination_currency: self.to.currency.clone(),
            destination_region: self.to.region.clone(),
        }
    }
}

/// `paymesh partner …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PartnerCommand {
    /// Create a partner or change its role and net debit cap.
    Upsert {
        #[command(flatten)]
        target: Target,
        /// The partner id, 1 to 32 characters of `[a-z0-9-]`.
        #[arg(long)]
        id: String,
        /// The partner's home region (where its position lives).
        #[arg(long)]
        home_region: String,
        /// What the partner may do.
        #[arg(long, value_enum)]
        role: Role,
        /// ISO 4217 code of its settlement currency.
        #[arg(long)]
        currency: String,
        /// How far its posted balance may go below zero, in the settlement
        /// currency; 0 = prefunded only.
        #[arg(long, default_value = "0")]
        net_debit_cap: String,
    },
    /// Stop new quotes and transfers for a partner (reads keep working).
    Suspend {
        #[command(flatten)]
        target: Target,
        /// The partner id.
        #[arg(long)]
        id: String,
    },
    /// Let a suspended partner transact again.
    Activate {
        #[command(flatten)]
        target: Target,
        /// The partner id.
        #[arg(long)]
        id: String,
    },
    /// Set a partner's request rate and caps; a flag left out keeps its
    /// current value. Replicated: the leader applies a new rate at once.
    Limits {
        #[command(flatten)]
        target: Target,
        /// The partner id.
        #[arg(long)]
        id: String,
        /// Requests per second it may make to the leader, sustained (1 to 50,000).
        #[arg(long)]
        requests_per_second: Option<u32>,
        /// Requests it may make in a burst above that rate (1 to 100,000).
        #[arg(long)]
        requests_burst: Option<u32>,
        /// Quotes it may hold unused at once (1 to 100,000).
        #[arg(long)]
        quotes_outstanding_max: Option<u32>,
        /// Its transfers not yet final at once (1 to 100,000).
        #[arg(long)]
        transfers_in_flight_max: Option<u32>,
    },
    /// Show one partner, its limits and usage, and its positions.
    Show {
        #[command(flatten)]
        target: Target,
        /// The partner id.
        #[arg(long)]
        id: String,
    },
    /// List the region's partners.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// `paymesh corridor …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum CorridorCommand {
    /// Create a corridor or change its pricing and limits. Amounts and fees
    /// are in the source currency.
    Upsert {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
        /// Spread taken from the mid rate, in basis points (0 to 2000).
        #[arg(long, default_value_t = 0)]
        spread_bps: u32,
        /// Flat fee per transfer.
        #[arg(long, default_value = "0")]
        fee_fixed: String,
        /// Proportional fee, in basis points of the source amount (0 to 2000).
        #[arg(long, default_value_t = 0)]
        fee_bps: u32,
        /// Smallest fee charged.
        #[arg(long, default_value = "0")]
        fee_min: String,
        /// Largest fee charged.
        #[arg(long, default_value = "0")]
        fee_max: String,
        /// Smallest source amount per transfer.
        #[arg(long)]
        min: String,
        /// Largest source amount per transfer.
        #[arg(long)]
        max: String,
        /// Cap on the corridor's source amounts per UTC day.
        #[arg(long)]
        daily_cap: String,
    },
    /// Stop new quotes and transfers on a corridor.
    Suspend {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
    },
    /// Let a suspended corridor carry transfers again.
    Activate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
    },
    /// Set at what rate the corridor's refunds credit payers back:
    /// `original` (the payment's own rate, the default) or `current` (the
    /// mid rate when the payer's region reserves the credit, no spread).
    /// A payer's cancel always gives back the whole principal.
    RefundRate {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
        /// `original` or `current`.
        #[arg(long, value_enum)]
        rate: RefundRateArg,
    },
    /// Show one corridor and its FX rates that have not expired.
    Show {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
    },
    /// List the region's corridors.
    List {
        #[command(flatten)]
        target: Target,
    },
}

/// At what rate a corridor's refunds credit payers back.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum RefundRateArg {
    /// The payment's own rate.
    Original,
    /// The corridor's mid rate when the refund is prepared.
    Current,
}

/// `paymesh fx …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FxCommand {
    /// Record a corridor's mid rate and the window in which quotes may use it.
    Set {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        corridor: CorridorArg,
        /// Destination units per source unit, before spread (at most 12
        /// fractional digits).
        #[arg(long)]
        rate: String,
        /// First instant the rate applies, Unix milliseconds [default: now].
        #[arg(long)]
        valid_from_unix_ms: Option<i64>,
        /// How long the rate applies, in seconds (at most 86400).
        #[arg(long, default_value_t = 3_600)]
        valid_for_secs: u64,
    },
}

/// `paymesh settings …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SettingsCommand {
    /// Show the region's settings.
    Show {
        #[command(flatten)]
        target: Target,
    },
    /// Change the region's settings (one replicated command; every node
    /// uses the new values from the same log index on).
    Set {
        #[command(flatten)]
        target: Target,
        /// How long partners' idempotency keys are remembered, in days (1 to
        /// 400; 30 by default). Lengthening brings back keys still in
        /// history; shortening forgets older keys at once.
        #[arg(long)]
        idempotency_retention_days: Option<u32>,
        /// How long after a transfer committed its payee may refund it, in
        /// days (0 to 400; 365 by default; 0 refuses every refund).
        #[arg(long)]
        refund_window_days: Option<u32>,
        /// How long after a transfer committed its payer may cancel it, in
        /// minutes (0 to 10080; 1440, a day, by default; 0 refuses every
        /// cancel).
        #[arg(long)]
        cancel_window_minutes: Option<u32>,
    },
}

/// `paymesh position …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum PositionCommand {
    /// Credit a partner's posted balance after it funded its account outside
    /// paymesh. Idempotent by --reference.
    TopUp(Funding),
    /// Debit a partner's posted balance for prefunding paid back to it
    /// outside paymesh: at most what the position holds beyond the debits
    /// reserved for transfers in flight. Idempotent by --reference.
    FundOut(Funding),
}

/// `paymesh transfer …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TransferCommand {
    /// Reverse a transfer whose payee is homed in this region (a dispute's
    /// outcome): refund, on the payee's behalf, everything earlier refunds
    /// left, whatever the refund window and the payee's status. A transfer
    /// is reversed once: asked again, the first reversal answers. Audited
    /// with the operator and --reason.
    Reverse {
        #[command(flatten)]
        target: Target,
        /// The transfer, `<origin-region>:<sequence>`.
        #[arg(long)]
        transfer: String,
        /// Why (the dispute's reference, say): kept in the audit trail.
        #[arg(long)]
        reason: String,
    },
}

/// Run `paymesh transfer …`.
pub(crate) async fn transfer(command: TransferCommand) -> anyhow::Result<()> {
    let TransferCommand::Reverse { target, transfer, reason } = command;
    let request = wire::ReverseTransferRequest { transfer_id: transfer.clone(), reason };
    let answer = call(&target, |mut c| {
        let request = request.clone();
        async move { c.reverse_transfer(request).await }
    })
    .await?;
    if answer.refund.is_none() {
        accepted(answer.reject_code)?;
    }
    let refund = answer.refund.context("the node recorded the reversal but did not return its refund")?;
    let state = paymesh_proto::partner::v1::TransferState::try_from(refund.state)
        .map_or("unknown", |s| s.as_str_name().trim_start_matches("TRANSFER_STATE_"));
    let show = |m: Option<&common::Money>| m.map_or_else(String::new, |m| format!("{} {}", m.amount, m.currency));
    println!(
        "reversed {transfer}: refund {} {state}, {} from the payee, {} to the payer",
        refund.refund_id,
        show(refund.debited_amount.as_ref()),
        show(refund.credited_amount.as_ref())
    );
    accepted(answer.reject_code)
}

/// Money moved into or out of a partner's position by the operator.
#[derive(Debug, clap::Args)]
pub(crate) struct Funding {
    #[command(flatten)]
    target: Target,
    /// The partner id.
    #[arg(long)]
    partner: String,
    /// The amount, a positive decimal.
    #[arg(long)]
    amount: String,
    /// ISO 4217 code; the partner's settlement currency.
    #[arg(long)]
    currency: String,
    /// The movement's unique reference (the bank transfer's id, say); a
    /// repeat with the same reference moves nothing more. Top-ups and
    /// fund-outs have references of their own.
    #[arg(long)]
    reference: String,
}

/// `paymesh route …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RouteCommand {
    /// Route QR payloads starting with a prefix to a payee partner. Routes
    /// are mesh-wide: write each route to every region.
    Upsert {
        #[command(flatten)]
        target: Target,
        /// The QR payload prefix, 4 to 512 printable characters.
        #[arg(long)]
        prefix: String,
        /// The payee partner id.
        #[arg(long)]
        payee: String,
        /// The payee partner's home region.
        #[arg(long)]
        region: String,
        /// ISO 4217 code of the payee's settlement currency.
        #[arg(long)]
        currency: String,
    },
}

fn show_money(money: Option<&common::Money>) -> String {
    money.map_or_else(|| "-".to_owned(), |m| format!("{} {}", m.amount, m.currency))
}

/// Run one admin call on the region's leader.
pub(crate) async fn call<T, F, Fut>(target: &Target, call: F) -> anyhow::Result<T>
where
    F: Fn(AdminServiceClient<NodeChannel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    call_region(&Region::new(target.addresses()?, target.credentials()?), call).await
}

fn partner_line(p: &wire::Partner) -> String {
    let role = wire::PartnerRole::try_from(p.role).map_or("?", |r| r.as_str_name().trim_start_matches("PARTNER_ROLE_"));
    let status =
        wire::PartnerStatus::try_from(p.status).map_or("?", |s| s.as_str_name().trim_start_matches("PARTNER_STATUS_"));
    format!(
        "{:<32} {:<12} {:<6} {:<9} {} net debit cap {}",
        p.partner_id,
        p.home_region,
        role.to_lowercase(),
        status.to_lowercase(),
        p.settlement_currency,
        show_money(p.net_debit_cap.as_ref())
    )
}

fn limits_line(limits: Option<&wire::PartnerLimits>, usage: Option<&wire::PartnerUsage>) -> String {
    let Some(l) = limits else { return "limits: (not reported)".into() };
    let used = |n: Option<u32>| n.map_or_else(String::new, |n| format!("{n} of "));
    format!(
        "limits: {} requests/s, burst {}; unused quotes {}{}; transfers in flight {}{}",
        l.requests_per_second,
        l.requests_burst,
        used(usage.map(|u| u.quotes_outstanding)),
        l.quotes_outstanding_max,
        used(usage.map(|u| u.transfers_in_flight)),
        l.transfers_in_flight_max,
    )
}

fn corridor_name(c: Option<&common::CorridorId>) -> String {
    c.map_or_else(
        || "-".to_owned(),
        |c| format!("{}:{} -> {}:{}", c.source_region, c.source_currency, c.destination_region, c.destination_currency),
    )
}

fn corridor_line(c: &wire::Corridor) -> String {
    let status = wire::CorridorStatus::try_from(c.status)
        .map_or("?", |s| s.as_str_name().trim_start_matches("CORRIDOR_STATUS_"));
    let fee = c.fee.as_ref().map_or_else(
        || "-".to_owned(),
        |f| {
            format!(
                "{} + {} bp (min {}, max {})",
                show_money(f.fixed.as_ref()),
                f.rate_bps,
                show_money(f.min.as_ref()),
                show_money(f.max.as_ref())
            )
        },
    );
    let refunds = wire::RefundRate::try_from(c.refund_rate)
        .map_or("?", |r| r.as_str_name().trim_start_matches("REFUND_RATE_"))
        .to_lowercase();
    format!(
        "{}  {}  spread {} bp  fee {}  amounts {} to {}  daily cap {}  refunds at the {refunds} rate",
        corridor_name(c.corridor.as_ref()),
        status.to_lowercase(),
        c.spread_bps,
        fee,
        show_money(c.min_amount.as_ref()),
        show_money(c.max_amount.as_ref()),
        show_money(c.daily_cap.as_ref())
    )
}

fn position_line(p: &common::Position) -> String {
    format!(
        "  {} posted {}  pending debits {}  pending credits {}  available {}  net debit cap {}",
        p.currency,
        show_money(p.posted_balance.as_ref()),
        show_money(p.pending_debits.as_ref()),
        show_money(p.pending_credits.as_ref()),
        show_money(p.available.as_ref()),
        show_money(p.net_debit_cap.as_ref())
    )
}

/// Run `paymesh partner …`.
pub(crate) async fn partner(command: PartnerCommand) -> anyhow::Result<()> {
    match command {
        PartnerCommand::Upsert { target, id, home_region, role, currency, net_debit_cap } => {
            let role = match role {
                Role::Payer => wire::PartnerRole::Payer,
                Role::Payee => wire::PartnerRole::Payee,
                Role::Both => wire::PartnerRole::Both,
            };
            let request = wire::UpsertPartnerRequest {
                partner_id: id,
                home_region,
                role: role as i32,
                settlement_currency: currency.clone(),
                net_debit_cap: money(&net_debit_cap, &currency),
            };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.upsert_partner(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let partner = answer.partner.context("the node stored the partner but did not return it")?;
            println!("stored  {}", partner_line(&partner));
        }
        PartnerCommand::Suspend { target, id } => {
            set_partner_status(&target, id, wire::PartnerStatus::Suspended).await?
        }
        PartnerCommand::Activate { target, id } => set_partner_status(&target, id, wire::PartnerStatus::Active).await?,
        PartnerCommand::Limits {
            target,
            id,
            requests_per_second,
            requests_burst,
            quotes_outstanding_max,
            transfers_in_flight_max,
        } => {
            let request = wire::GetPartnerRequest { partner_id: id.clone() };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.get_partner(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let current = answer
                .partner
                .and_then(|p| p.limits)
                .context("the node did not report the partner's current limits")?;
            let limits = wire::PartnerLimits {
                requests_per_second: requests_per_second.unwrap_or(current.requests_per_second),
                requests_burst: requests_burst.unwrap_or(current.requests_burst),
                quotes_outstanding_max: quotes_outstanding_max.unwrap_or(current.quotes_outstanding_max),
                transfers_in_flight_max: transfers_in_flight_max.unwrap_or(current.transfers_in_flight_max),
            };
            let request = wire::SetPartnerLimitsRequest { partner_id: id, limits: Some(limits) };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.set_partner_limits(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let partner = answer.partner.context("the node stored the limits but did not return the partner")?;
            println!("stored  {}", partner_line(&partner));
            println!("{}", limits_line(partner.limits.as_ref(), None));
        }
        PartnerCommand::Show { target, id } => {
            let request = wire::GetPartnerRequest { partner_id: id };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.get_partner(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let partner = answer.partner.context("the node found the partner but did not return it")?;
            println!("{}", partner_line(&partner));
            println!("{}", limits_line(partner.limits.as_ref(), answer.usage.as_ref()));
            for position in &answer.positions {
                println!("{}", position_line(position));
            }
        }
        PartnerCommand::List { target } => {
            let mut token = String::new();
            for _ in 0..LIST_PAGES_MAX {
                let request = wire::ListPartnersRequest { page_size: LIST_PAGE, page_token: token.clone() };
                let page = call(&target, |mut c| {
                    let request = request.clone();
                    async move { c.list_partners(request).await }
                })
                .await?;
                for partner in &page.partners {
                    println!("{}", partner_line(partner));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                token = page.next_page_token;
            }
            bail!("stopped after {LIST_PAGES_MAX} pages");
        }
    }
    Ok(())
}

async fn set_partner_status(target: &Target, id: String, status: wire::PartnerStatus) -> anyhow::Result<()> {
    let request = wire::SetPartnerStatusRequest { partner_id: id, status: status as i32 };
    let answer = call(target, |mut c| {
        let request = request.clone();
        async move { c.set_partner_status(request).await }
    })
    .await?;
    accepted(answer.reject_code)?;
    let partner = answer.partner.context("the node stored the status but did not return the partner")?;
    println!("stored  {}", partner_line(&partner));
    Ok(())
}

/// Run `paymesh settings …`.
pub(crate) async fn settings(command: SettingsCommand) -> anyhow::Result<()> {
    let settings = match command {
        SettingsCommand::Show { target } => {
            call(&target, |mut c| async move { c.get_region_settings(wire::GetRegionSettingsRequest {}).await })
                .await?
                .settings
        }
        SettingsCommand::Set { target, idempotency_retention_days, refund_window_days, cancel_window_minutes } => {
            if idempotency_retention_days.is_none() && refund_window_days.is_none() && cancel_window_minutes.is_none() {
                bail!(
                    "nothing to set: give --idempotency-retention-days, --refund-window-days or \
                     --cancel-window-minutes"
                );
            }
            let request = wire::SetRegionSettingsRequest {
                idempotency_retention_days,
                refund_window_days,
                cancel_window_minutes,
            };
            call(&target, |mut c| async move { c.set_region_settings(request).await }).await?.settings
        }
    };
    let settings = settings.context("the node did not return the settings")?;
    println!("idempotency retention  {} days", settings.idempotency_retention_days);
    println!("refund window          {} days", settings.refund_window_days);
    println!("cancel window          {} minutes", settings.cancel_window_minutes);
    Ok(())
}

/// Run `paymesh corridor …`.
pub(crate) async fn corridor(command: CorridorCommand) -> anyhow::Result<()> {
    match command {
        CorridorCommand::Upsert {
            target,
            corridor,
            spread_bps,
            fee_fixed,
            fee_bps,
            fee_min,
            fee_max,
            min,
            max,
            daily_cap,
        } => {
            let currency = corridor.from.currency.clone();
            let request = wire::UpsertCorridorRequest {
                corridor: Some(corridor.wire()),
                spread_bps,
                fee: Some(wire::FeeSchedule {
                    fixed: money(&fee_fixed, &currency),
                    rate_bps: fee_bps,
                    min: money(&fee_min, &currency),
                    max: money(&fee_max, &currency),
                }),
                min_amount: money(&min, &currency),
                max_amount: money(&max, &currency),
                daily_cap: money(&daily_cap, &currency),
            };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.upsert_corridor(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let stored = answer.corridor.context("the node stored the corridor but did not return it")?;
            println!("stored  {}", corridor_line(&stored));
        }
        CorridorCommand::Suspend { target, corridor } => {
            set_corridor_status(&target, &corridor, wire::CorridorStatus::Suspended).await?;
        }
        CorridorCommand::Activate { target, corridor } => {
            set_corridor_status(&target, &corridor, wire::CorridorStatus::Active).await?;
        }
        CorridorCommand::RefundRate { target, corridor, rate } => {
            let refund_rate = match rate {
                RefundRateArg::Original => wire::RefundRate::Original,
                RefundRateArg::Current => wire::RefundRate::Current,
            };
            let request =
                wire::SetCorridorRefundRateRequest { corridor: Some(corridor.wire()), refund_rate: refund_rate as i32 };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.set_corridor_refund_rate(request).await }
            })
            .await?;
            let stored = answer.corridor.context("the node stored the refund rate but did not return the corridor")?;
            println!("stored  {}", corridor_line(&stored));
        }
        CorridorCommand::Show { target, corridor } => {
            let request = wire::GetCorridorRequest { corridor: Some(corridor.wire()) };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.get_corridor(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let stored = answer.corridor.context("the node found the corridor but did not return it")?;
            println!("{}", corridor_line(&stored));
            for rate in &answer.rates {
                println!(
                    "  rate {} valid from {} until {} (Unix ms)",
                    rate.mid_rate, rate.valid_from_unix_ms, rate.valid_until_unix_ms
                );
            }
        }
        CorridorCommand::List { target } => {
            let mut token = String::new();
            for _ in 0..LIST_PAGES_MAX {
                let request = wire::ListCorridorsRequest { page_size: LIST_PAGE, page_token: token.clone() };
                let page = call(&target, |mut c| {
                    let request = request.clone();
                    async move { c.list_corridors(request).await }
                })
                .await?;
                for corridor in &page.corridors {
                    println!("{}", corridor_line(corridor));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                token = page.next_page_token;
            }
            bail!("stopped after {LIST_PAGES_MAX} pages");
        }
    }
    Ok(())
}

async fn set_corridor_status(
    target: &Target,
    corridor: &CorridorArg,
    status: wire::CorridorStatus,
) -> anyhow::Result<()> {
    let request = wire::SetCorridorStatusRequest { corridor: Some(corridor.wire()), status: status as i32 };
    let answer = call(target, |mut c| {
        let request = request.clone();
        async move { c.set_corridor_status(request).await }
    })
    .await?;
    accepted(answer.reject_code)?;
    let stored = answer.corridor.context("the node stored the status but did not return the corridor")?;
    println!("stored  {}", corridor_line(&stored));
    Ok(())
}

/// Run `paymesh fx …`.
pub(crate) async fn fx(command: FxCommand) -> anyhow::Result<()> {
    let FxCommand::Set { target, corridor, rate, valid_from_unix_ms, valid_for_secs } = command;
    let valid_for = Duration::from_secs(valid_for_secs);
    if valid_for.is_zero() || valid_for > RATE_VALIDITY_MAX {
        bail!("--valid-for-secs must be 1 to {}", RATE_VALIDITY_MAX.as_secs());
    }
    let from = valid_from_unix_ms.unwrap_or_else(unix_ms_now);
    let until = from.saturating_add(i64::try_from(valid_for.as_millis()).unwrap_or(i64::MAX));
    let request = wire::SetFxRateRequest {
        corridor: Some(corridor.wire()),
        mid_rate: rate,
        valid_from_unix_ms: from,
        valid_until_unix_ms: until,
    };
    let answer = call(&target, |mut c| {
        let request = request.clone();
        async move { c.set_fx_rate(request).await }
    })
    .await?;
    accepted(answer.reject_code)?;
    let stored = answer.rate.context("the node stored the rate but did not return it")?;
    println!(
        "stored  {}  rate {} valid from {} until {} (Unix ms)",
        corridor_name(stored.corridor.as_ref()),
        stored.mid_rate,
        stored.valid_from_unix_ms,
        stored.valid_until_unix_ms
    );
    Ok(())
}

/// Run `paymesh position …`.
pub(crate) async fn position(command: PositionCommand) -> anyhow::Result<()> {
    let (position, done, partner) = match command {
        PositionCommand::TopUp(Funding { target, partner, amount, currency, reference }) => {
            let request = wire::TopUpPositionRequest {
                partner_id: partner.clone(),
                amount: money(&amount, &currency),
                reference,
            };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.top_up_position(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            (answer.position, "credited", partner)
        }
        PositionCommand::FundOut(Funding { target, partner, amount, currency, reference }) => {
            let request = wire::FundOutPositionRequest {
                partner_id: partner.clone(),
                amount: money(&amount, &currency),
                reference,
            };
            let answer = call(&target, |mut c| {
                let request = request.clone();
                async move { c.fund_out_position(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            (answer.position, "debited", partner)
        }
    };
    let position = position.with_context(|| format!("the node {done} the position but did not return it"))?;
    println!("{done} {partner}");
    println!("{}", position_line(&position));
    Ok(())
}

/// Run `paymesh route …`.
pub(crate) async fn route(command: RouteCommand) -> anyhow::Result<()> {
    let RouteCommand::Upsert { target, prefix, payee, region, currency } = command;
    let request = wire::UpsertPayeeRouteRequest { qr_prefix: prefix, payee_partner_id: payee, region, currency };
    let answer = call(&target, |mut c| {
        let request = request.clone();
        async move { c.upsert_payee_route(request).await }
    })
    .await?;
    accepted(answer.reject_code)?;
    let stored = answer.route.context("the node stored the route but did not return it")?;
    println!(
        "stored  {} -> payee {} in {} ({})",
        stored.qr_prefix, stored.payee_partner_id, stored.region, stored.currency
    );
    Ok(())
}

/// Run `paymesh statement`: an account's movements between two instants,
/// page after page, with the balances after each.
pub(crate) async fn statement(
    target: Target,
    account: &str,
    from_ms: i64,
    to_ms: i64,
    limit: usize,
) -> anyhow::Result<()> {
    println!(
        "{:<25} {:<19} {:<6} {:>18} {:<28} {:>18} {:>16} {:>16}",
        "at (unix ms)", "kind", "side", "amount", "entry", "posted after", "pending debits", "pending credits"
    );
    let mut token = String::new();
    let mut printed = 0;
    loop {
        let request = wire::GetAccountStatementRequest {
            account: account.to_owned(),
            from_unix_ms: from_ms,
            to_unix_ms: to_ms,
            page_size: 500,
            page_token: token.clone(),
        };
        let answer = call(&target, |mut c| {
            let request = request.clone();
            async move { c.get_account_statement(request).await }
        })
        .await?;
        for line in &answer.lines {
            if printed == limit {
                println!("(stopped after {limit} lines; raise --limit or narrow --from-ms/--to-ms)");
                return Ok(());
            }
            let kind = common::MovementKind::try_from(line.kind).map_or("?", |k| k.as_str_name());
            println!(
                "{:<25} {:<19} {:<6} {:>18} {:<28} {:>18} {:>16} {:>16}",
                line.at_unix_ms,
                kind.trim_start_matches("MOVEMENT_KIND_"),
                if line.debit { "debit" } else { "credit" },
                show_money(line.amount.as_ref()),
                line.entry_id,
                show_money(line.posted_balance.as_ref()),
                show_money(line.pending_debits.as_ref()),
                show_money(line.pending_credits.as_ref()),
            );
            printed += 1;
        }
        if answer.next_page_token.is_empty() {
            break;
        }
        token = answer.next_page_token;
    }
    println!("{printed} movements");
    Ok(())
}

/// Run `paymesh ledger`: the region's per-currency totals and whether its
/// books balance. Exits with status 1 if they do not.
pub(crate) async fn ledger(target: Target) -> anyhow::Result<()> {
    let answer =
        call(&target, |mut c| async move { c.get_ledger_summary(wire::GetLedgerSummaryRequest {}).await }).await?;
    let mut out = String::new();
    let _ = writeln!(out, "ledger as of applied index {}", answer.applied_index);
    for c in &answer.currencies {
        let _ = writeln!(
            out,
            "  {}  debits {} / credits {} posted,  debits {} / credits {} pending",
            c.currency,
            show_money(c.debits_posted.as_ref()),
            show_money(c.credits_posted.as_ref()),
            show_money(c.debits_pending.as_ref()),
            show_money(c.credits_pending.as_ref())
        );
    }
    print!("{out}");
    if !answer.balanced {
        bail!("the ledger does not balance: {}", answer.violation);
    }
    println!("balanced: every currency sums to zero and no account is beyond its limit");
    Ok(())
}

//! `paymesh settlement …`: close a region's settlement window, show one,
//! record a position settled, and cross-check a window with another
//! region.

use std::path::PathBuf;

use anyhow::{bail, Context};
use paymesh_client::Region;
use paymesh_harness::admin_calls::{accepted, call_region};
use paymesh_harness::settlement::{self, Verdict};
use paymesh_proto::admin::v1 as wire;

use crate::Target;

/// `paymesh settlement …`
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SettlementCommand {
    /// Close the region's open window and open the next (one replicated
    /// command; payments go on). Prints the closed window's figures.
    Close {
        #[command(flatten)]
        target: Target,
        /// Print the window as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a window: its accounts' nets and cross-border figures.
    Show {
        #[command(flatten)]
        target: Target,
        /// The window's number; 0 (the default) for the open one.
        #[arg(long, default_value_t = 0)]
        window: u64,
        /// Print the window as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record an account's net of a closed window as settled by a bank
    /// transfer: the account moves back by its net against the settlement
    /// account. Idempotent with the same --reference.
    Record {
        #[command(flatten)]
        target: Target,
        /// The closed window.
        #[arg(long)]
        window: u64,
        /// `partner:<id>:<CUR>` or `clearing:<region>:<CUR>`.
        #[arg(long)]
        account: String,
        /// The bank transfer's reference.
        #[arg(long)]
        reference: String,
    },
    /// Download a reconciliation file of a partner homed in this region for
    /// a closed window: its movements (CSV), their summary (CSV), a
    /// camt.053.001.08 statement, or its cross-border payments as
    /// pacs.008.001.08.
    File {
        #[command(flatten)]
        target: Target,
        /// The closed window.
        #[arg(long)]
        window: u64,
        /// The partner.
        #[arg(long)]
        partner: String,
        /// Which file.
        #[arg(long, value_enum)]
        kind: FileKind,
        /// Where to write it: a path, or `-` for standard output [default:
        /// the file's own name, in the current directory].
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Compare what this region committed towards another region in one of
    /// its closed windows (payments and refunds it coordinated) with what
    /// the other region posted for that window, over all of its own
    /// windows. Run it from the other region for the other direction.
    /// Exits with status 1 if the figures differ once every decision
    /// arrived.
    CrossCheck {
        #[command(flatten)]
        target: Target,
        /// This region's name.
        #[arg(long)]
        region: String,
        /// The closed window of this region.
        #[arg(long)]
        window: u64,
        #[command(flatten)]
        other: OtherRegion,
    },
}

/// Which reconciliation file.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum FileKind {
    /// The partner's movements, CSV.
    Transactions,
    /// Their counts and totals, CSV.
    Summary,
    /// ISO 20022 camt.053.001.08.
    Camt053,
    /// ISO 20022 pacs.008.001.08.
    Pacs008,
}

/// The other region of a cross-check: its name and how to reach it.
#[derive(Debug, clap::Args)]
pub(crate) struct OtherRegion {
    /// The other region's name.
    #[arg(long = "with-region")]
    name: String,
    /// A node configuration file of the other region.
    #[arg(long = "with-config", conflicts_with = "with_node")]
    with_config: Option<PathBuf>,
    /// A node API address of the other region (repeat for several).
    #[arg(long = "with-node")]
    with_node: Vec<String>,
    /// The other region's CA certificate (PEM).
    #[arg(long = "with-ca", requires_all = ["with_cert", "with_key"])]
    with_ca: Option<PathBuf>,
    /// An operator certificate of the other region (PEM).
    #[arg(long = "with-cert", requires_all = ["with_ca", "with_key"])]
    with_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "with-key", requires_all = ["with_ca", "with_cert"])]
    with_key: Option<PathBuf>,
    /// Call the other region without certificates (a development region
    /// running `insecure_plaintext`).
    #[arg(long = "with-plaintext")]
    with_plaintext: bool,
}

impl OtherRegion {
    fn target(&self) -> Target {
        Target {
            config: self.with_config.clone(),
            node: self.with_node.clone(),
            ca: self.with_ca.clone(),
            cert: self.with_cert.clone(),
            key: self.with_key.clone(),
            plaintext: self.with_plaintext,
        }
    }
}

fn region(target: &Target) -> anyhow::Result<Region> {
    Ok(Region::new(target.addresses()?, target.credentials()?))
}

fn print_window(name: &str, window: &wire::SettlementWindow, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&window_json(window))?);
    } else {
        print!("{}", settlement::render(name, window));
    }
    Ok(())
}

fn money_json(m: Option<&paymesh_proto::common::v1::Money>) -> serde_json::Value {
    m.map_or(serde_json::Value::Null, |m| serde_json::json!({ "amount": m.amount, "currency": m.currency }))
}

fn tallies_json(tallies: &[wire::Tally]) -> serde_json::Value {
    tallies
        .iter()
        .map(|t| {
            serde_json::json!({
                "flow": t.flow,
                "source_currency": t.source_currency,
                "destination_currency": t.destination_currency,
                "count": t.count,
                "source_amount": money_json(t.source_amount.as_ref()),
                "destination_amount": money_json(t.destination_amount.as_ref()),
            })
        })
        .collect()
}

fn window_json(w: &wire::SettlementWindow) -> serde_json::Value {
    let positions: Vec<serde_json::Value> = w
        .positions
        .iter()
        .map(|p| {
            serde_json::json!({
                "account": p.account,
                "net": money_json(p.net.as_ref()),
                "settled": p.settled,
                "settlement_reference": p.settlement_reference,
                "settled_unix_ms": p.settled_unix_ms,
            })
        })
        .collect();
    let regions = |list: &[wire::RegionTallies]| -> Vec<serde_json::Value> {
        list.iter()
            .map(|r| {
                serde_json::json!({
                    "region": r.region,
                    "window": r.window,
                    "decisions_in_flight": r.decisions_in_flight,
                    "tallies": tallies_json(&r.tallies),
                })
            })
            .collect()
    };
    serde_json::json!({
        "number": w.number,
        "opened_unix_ms": w.opened_unix_ms,
        "closed_unix_ms": w.closed_unix_ms,
        "positions": positions,
        "sent": regions(&w.sent),
        "received": regions(&w.received),
    })
}

/// Run `paymesh settlement …`.
pub(crate) async fn run(command: SettlementCommand) -> anyhow::Result<()> {
    match command {
        SettlementCommand::Close { target, json } => {
            let answer = call_region(&region(&target)?, |mut c| async move {
                c.close_settlement_window(wire::CloseSettlementWindowRequest {}).await
            })
            .await?;
            let Some(window) = answer.window else { bail!("the node closed the window but did not return it") };
            print_window("", &window, json)
        }
        SettlementCommand::Show { target, window, json } => {
            let shown = settlement::window(&region(&target)?, window).await?;
            print_window("", &shown, json)
        }
        SettlementCommand::Record { target, window, account, reference } => {
            let request = wire::RecordSettlementRequest { window, account: account.clone(), reference };
            let answer = call_region(&region(&target)?, |mut c| {
                let request = request.clone();
                async move { c.record_settlement(request).await }
            })
            .await?;
            accepted(answer.reject_code)?;
            let position = answer.window.as_ref().and_then(|w| w.positions.iter().find(|p| p.account == account));
            match position {
                Some(p) => println!(
                    "window {window}: {account} settled ({}), net {}",
                    p.settlement_reference,
                    p.net.as_ref().map_or_else(String::new, |m| format!("{} {}", m.amount, m.currency))
                ),
                None => println!("window {window}: {account} settled"),
            }
            Ok(())
        }
        SettlementCommand::File { target, window, partner, kind, out } => {
            let kind = match kind {
                FileKind::Transactions => wire::SettlementFileKind::Transactions,
                FileKind::Summary => wire::SettlementFileKind::Summary,
                FileKind::Camt053 => wire::SettlementFileKind::Camt053,
                FileKind::Pacs008 => wire::SettlementFileKind::Pacs008,
            };
            let (name, bytes) = settlement::file(&region(&target)?, window, &partner, kind).await?;
            match out {
                Some(path) if path.as_os_str() == "-" => {
                    use std::io::Write as _;
                    std::io::stdout().write_all(&bytes).context("writing the file to standard output")?;
                }
                out => {
                    let path = out.unwrap_or_else(|| PathBuf::from(&name));
                    std::fs::write(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
                    println!("{} ({} bytes)", path.display(), bytes.len());
                }
            }
            Ok(())
        }
        SettlementCommand::CrossCheck { target, region: name, window, other } => {
            let (here, there) = (region(&target)?, region(&other.target())?);
            let check = settlement::cross_check((&here, &name), (&there, &other.name), window).await?;
            println!("{}", check.line());
            if check.verdict == Verdict::Differ {
                bail!("the figures of {name}'s window {window} differ between {name} and {}", other.name);
            }
            Ok(())
        }
    }
}

//! The PostgreSQL baseline: the same double-entry transfer paymesh applies for
//! a same-region transfer, done the way one would do it on a single durable
//! SQL database, so `paymesh bench` can put the two side by side.
//!
//! One transfer is one transaction (`synchronous_commit = on`, set on every
//! session, so COMMIT returns after the WAL is flushed):
//!
//! 1. insert the transfer row, `ON CONFLICT DO NOTHING` (a conflict means the
//!    idempotency key was already used: declined as "already done");
//! 2. debit the payer by amount + fee, only if
//!    `debits_posted + amount + fee <= credits_posted + net_debit_cap`
//!    (one conditional `UPDATE … RETURNING`; no row: declined, ROLLBACK);
//! 3. credit the payee; move the amount through the clearing account; credit
//!    the fee account;
//! 4. insert the three ledger entries (payer → clearing: amount, payer → fees:
//!    fee, clearing → payee: amount);
//! 5. COMMIT.
//!
//! The clearing account's two legs (credited by the payer's principal, debited
//! for the payee's) are **netted into one UPDATE** that adds the amount to both
//! its debits and its credits, so a transfer updates four account rows, not
//! five. Rows are always locked in the same order (payer, payee, clearing,
//! fees: every transfer takes one row of each class, in class order), so
//! concurrent transfers cannot deadlock; the conditional payer debit comes
//! first so that a declined transfer never touches the hot mesh accounts.
//!
//! Statements are prepared once per connection and sent in three pipelined
//! flights (BEGIN + insert + debit; the three credits + the entries; COMMIT),
//! which is what a careful client of PostgreSQL would do; the COMMIT waits for
//! the row counts of the second flight so that a missing account can never be
//! committed.
//!
//! That is the `hot` shape: every transfer updates the region's clearing and
//! fee rows, as a switch's books do. `--postgres-shape spread` is
//! PostgreSQL's best case instead, a double-entry transfer that shares no
//! row with another: the transfer row inserted, the payer debited within
//! its cap and the payee credited, three statements in one pipelined flight
//! (the batches' code, with a batch of one), and nothing else (no fee, no
//! clearing, no entries).
//!
//! `--postgres-batch N` gives PostgreSQL the batching paymesh has: the
//! transfers that wait while every connection is busy are gathered, up to
//! N, into one transaction (one WAL flush), all their statements pipelined.
//! A batch in which any transfer would be declined is rolled back whole and
//! its transfers made again one by one, so each is decided as it would be
//! alone.
//!
//! A server with synchronous standbys (`scripts/postgres.sh
//! start-replicated`: a primary and two standbys, each commit waiting until
//! one of them has flushed it, so on disk on two of three servers as a
//! paymesh region's payment is) is measured the same way; its runs are
//! named with `-r` and the number of servers (`postgres-spread-b64-r3`),
//! and the audit checks that its standbys still counted for every commit.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Statement};

use super::load::{Attempt, Target};
use super::report::{Audit, AuditCheck, Totals};
use super::workload::{Pick, CURRENCY};

/// Most connections the target opens (each serves one worker at a time).
pub const CONNECTIONS_MAX: usize = 64;
/// Most payer or payee accounts.
pub const ACCOUNTS_MAX: usize = 100_000;
/// Longest wait for a connection to be set up, in seconds.
const CONNECT_TIMEOUT_S: u64 = 10;
/// The mesh's clearing account for the region.
const CLEARING: &str = "clearing:CN:CNY";
/// The mesh's fee revenue.
const FEES: &str = "fees:CNY";
/// Where the payers' prefunding comes from, so the books balance from the start.
const SETTLEMENT: &str = "settlement:CNY";
/// The partner name of the prefunding entries.
const SETUP_PARTNER: &str = "setup";

/// Most transfers in one batched transaction.
pub const BATCH_MAX: usize = 500;

/// Which transfer the baseline makes (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// A switch's transfer: payer, payee, the region's clearing and fee
    /// rows (which every transfer updates), three ledger entries.
    Hot,
    /// PostgreSQL's best case: one transfer row and two account updates,
    /// no row shared between transfers.
    Spread,
}

/// How often a transfer chosen as a deadlock's victim is made again.
const DEADLOCK_RETRIES: usize = 3;

/// An attempt failed with `e`, naming the server's SQLSTATE and message
/// when it has them (a deadlock's victim says `40P01`).
fn failed(what: &str, e: &tokio_postgres::Error) -> Attempt {
    match e.as_db_error() {
        Some(db) => Attempt::Failed(format!("postgres: {what}{}: {}", db.code().code(), db.message())),
        None => Attempt::Failed(format!("postgres: {what}{e}")),
    }
}

/// Whether `attempt` failed as a deadlock's victim (rolled back by the
/// server, so safe to make again).
fn deadlocked(attempt: &Attempt) -> bool {
    matches!(attempt, Attempt::Failed(why) if why.contains(tokio_postgres::error::SqlState::T_R_DEADLOCK_DETECTED.code()))
}

/// How many synchronous standbys stream from the server `client` is
/// connected to: 0 when it names none (`synchronous_standby_names` empty).
/// One that names some with none streaming is refused: its commits would
/// wait for ever.
async fn synchronous_standbys(client: &Client) -> anyhow::Result<usize> {
    let row = client
        .query_one(
            "SELECT current_setting('synchronous_standby_names'),
                    (SELECT count(*) FROM pg_stat_replication
                     WHERE state = 'streaming' AND sync_state IN ('sync', 'quorum'))",
            &[],
        )
        .await?;
    let (names, streaming): (String, i64) = (row.get(0), row.get(1));
    if names.trim().is_empty() {
        return Ok(0);
    }
    if streaming == 0 {
        bail!(
            "synchronous_standby_names is '{names}' but no standby streams, so no commit would return: start \
             them (scripts/postgres.sh start-replicated)"
        );
    }
    Ok(usize::try_from(streaming)?)
}

/// A transfer waiting for its batch, and where its outcome goes.
type Waiting = (Transfer, oneshot::Sender<Attempt>);

/// Where and how to set up the baseline.
#[derive(Clone, Debug)]
pub struct PostgresConfig {
    /// A `postgres://` URL (see `scripts/postgres.sh url`).
    pub url: String,
    /// The schema the tables are (re)created in; it is emptied at setup.
    pub schema: String,
    /// Connections to open, at most [`CONNECTIONS_MAX`].
    pub connections: usize,
    /// Payer accounts.
    pub payers: usize,
    /// Payee (merchant) accounts.
    pub payees: usize,
    /// Each payer's prefunded position, in fen.
    pub prefund_minor: i64,
    /// Which transfer.
    pub shape: Shape,
    /// Transfers per transaction, at most (1: each its own).
    pub batch: usize,
}

/// The baseline: one PostgreSQL connection per worker, up to [`CONNECTIONS_MAX`].
pub struct PostgresTarget {
    sessions: Arc<Vec<Mutex<Session>>>,
    payers: usize,
    payees: usize,
    schema: String,
    shape: Shape,
    batch: usize,
    /// The synchronous standbys streaming from the server when the run was
    /// set up (0: a server alone).
    standbys: usize,
    /// The batches' queue, when transfers are batched.
    gather: Option<mpsc::Sender<Waiting>>,
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("schema", &self.schema)
            .field("connections", &self.sessions.len())
            .field("payers", &self.payers)
            .field("payees", &self.payees)
            .field("shape", &self.shape)
            .field("batch", &self.batch)
            .field("standbys", &self.standbys)
            .finish()
    }
}

/// One connection and its prepared statements.
struct Session {
    client: Client,
    statements: Statements,
    /// A transaction may be open: an attempt was abandoned (timed out) or its
    /// ROLLBACK failed. The next attempt rolls back first.
    in_transaction: bool,
}

struct Statements {
    begin: Statement,
    insert_transfer: Statement,
    debit_payer: Statement,
    credit: Statement,
    clear: Statement,
    insert_entries: Statement,
    commit: Statement,
    rollback: Statement,
}

/// What one `(worker, sequence)` transfers: the workload's [`Pick`], with
/// account ids and an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Transfer {
    partner: String,
    key: String,
    payer: String,
    payee: String,
    amount: i64,
    fee: i64,
}

fn payer_id(index: usize) -> String {
    format!("payer:{index:05}")
}

fn payee_id(index: usize) -> String {
    format!("payee:{index:05}")
}

impl Transfer {
    fn new(worker: usize, sequence: u64, payers: usize, payees: usize) -> Transfer {
        let pick = Pick::new(worker, sequence, payers, payees);
        Transfer {
            partner: format!("wallet-{worker:03}"),
            key: format!("t-{sequence}"),
            payer: payer_id(pick.payer),
            payee: payee_id(pick.payee),
            amount: pick.amount_minor,
            fee: pick.fee_minor(),
        }
    }
}

/// A schema name safe to put into SQL unquoted.
fn checked_schema(schema: &str) -> anyhow::Result<&str> {
    let mut chars = schema.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') || schema.len() > 63 {
        bail!("the schema name must be a lower-case SQL identifier (a-z, 0-9, _), not {schema:?}");
    }
    Ok(schema)
}

/// Where `url` points, without its password, for messages.
fn describe(url: &str) -> String {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) => {
            let hosts: Vec<String> = config
                .get_hosts()
                .iter()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(host) => host.clone(),
                    tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                })
                .collect();
            let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
            format!(
                "PostgreSQL at {} port {} database {}",
                hosts.join(","),
                if ports.is_empty() { "5432".to_owned() } else { ports.join(",") },
                config.get_dbname().unwrap_or("(default)")
            )
        }
        Err(_) => "PostgreSQL (unparsable --postgres-url)".to_owned(),
    }
}

/// Connect, with a bounded wait; the connection is driven by its own task,
/// which ends when the client is dropped.
async fn connect(url: &str) -> anyhow::Result<Client> {
    let connecting = tokio_postgres::connect(url, NoTls);
    let (client, connection) = tokio::time::timeout(Duration::from_secs(CONNECT_TIMEOUT_S), connecting)
        .await
        .map_err(|_| anyhow!("no answer within {CONNECT_TIMEOUT_S} s"))?
        .context("connecting")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!("postgres connection ended: {e}");
        }
    });
    Ok(client)
}

impl PostgresTarget {
    /// Recreate the schema's tables, create and prefund the accounts, and open
    /// the connections.
    pub async fn setup(config: &PostgresConfig) -> anyhow::Result<PostgresTarget> {
        let schema = checked_schema(&config.schema)?;
        if config.connections == 0 || config.connections > CONNECTIONS_MAX {
            bail!("connections must be between 1 and {CONNECTIONS_MAX}, not {}", config.connections);
        }
        for (what, n) in [("payers", config.payers), ("payees", config.payees)] {
            if n == 0 || n > ACCOUNTS_MAX {
                bail!("{what} must be between 1 and {ACCOUNTS_MAX}, not {n}");
            }
        }
        if config.prefund_minor < 0 {
            bail!("the prefunded position cannot be negative");
        }
        if config.batch == 0 || config.batch > BATCH_MAX {
            bail!("--postgres-batch must be between 1 and {BATCH_MAX}, not {}", config.batch);
        }
        let settlement_minor = i64::try_from(config.payers)
            .ok()
            .and_then(|payers| payers.checked_mul(config.prefund_minor))
            .context("payers × prefund does not fit in a bigint")?;
        let whereto = describe(&config.url);
        let admin = connect(&config.url)
            .await
            .with_context(|| format!("{whereto}: is it running? start it with scripts/postgres.sh start"))?;
        admin
            .batch_execute(&format!(
                "SET client_min_messages = warning;
                 CREATE SCHEMA IF NOT EXISTS {schema};
                 SET search_path = {schema};
                 DROP TABLE IF EXISTS entries, transfers, accounts;
                 CREATE TABLE accounts (
                     id text PRIMARY KEY,
                     currency text NOT NULL,
                     debits_posted bigint NOT NULL DEFAULT 0,
                     credits_posted bigint NOT NULL DEFAULT 0,
                     net_debit_cap bigint -- NULL: no limit (the mesh's own accounts)
                 );
                 CREATE TABLE transfers (
                     partner text,
                     idempotency_key text,
                     amount bigint NOT NULL,
                     fee bigint NOT NULL,
                     PRIMARY KEY (partner, idempotency_key)
                 );
                 CREATE TABLE entries (
                     id bigserial,
                     transfer_partner text NOT NULL,
                     transfer_key text NOT NULL,
                     debit text NOT NULL,
                     credit text NOT NULL,
                     amount bigint NOT NULL
                 );"
            ))
            .await
            .with_context(|| format!("{whereto}: creating the tables in schema {schema}"))?;
        let payers = i32::try_from(config.payers).context("payers")?;
        let payees = i32::try_from(config.payees).context("payees")?;
        let statements = [
            (
                "INSERT INTO accounts (id, currency, credits_posted, net_debit_cap)
                 SELECT 'payer:' || lpad(i::text, 5, '0'), $1, $2, 0 FROM generate_series(0, $3 - 1) AS i",
                vec![&CURRENCY as &(dyn ToSql + Sync), &config.prefund_minor, &payers],
            ),
            (
                "INSERT INTO accounts (id, currency, net_debit_cap)
                 SELECT 'payee:' || lpad(i::text, 5, '0'), $1, 0 FROM generate_series(0, $2 - 1) AS i",
                vec![&CURRENCY, &payees],
            ),
            (
                "INSERT INTO accounts (id, currency, debits_posted) VALUES ($1, $4, $5), ($2, $4, 0), ($3, $4, 0)",
                vec![&SETTLEMENT, &CLEARING, &FEES, &CURRENCY, &settlement_minor],
            ),
            (
                "INSERT INTO entries (transfer_partner, transfer_key, debit, credit, amount)
                 SELECT $1, 'fund-' || id, $2, id, credits_posted FROM accounts WHERE id LIKE 'payer:%' ORDER BY id",
                vec![&SETUP_PARTNER, &SETTLEMENT],
            ),
        ];
        for (sql, params) in statements {
            admin.execute(sql, &params).await.with_context(|| format!("{whereto}: creating the accounts"))?;
        }
        admin.batch_execute("ANALYZE accounts").await.context("ANALYZE")?;
        let standbys =
            synchronous_standbys(&admin).await.with_context(|| format!("{whereto}: reading its standbys"))?;

        let mut sessions = Vec::with_capacity(config.connections);
        for _ in 0..config.connections {
            let session = Session::open(&config.url, schema).await.with_context(|| format!("{whereto}: connecting"))?;
            sessions.push(Mutex::new(session));
        }
        let sessions = Arc::new(sessions);
        let gather = (config.batch > 1).then(|| gather(sessions.clone(), config.shape, config.batch));
        Ok(PostgresTarget {
            sessions,
            payers: config.payers,
            payees: config.payees,
            schema: schema.to_owned(),
            shape: config.shape,
            batch: config.batch,
            standbys,
            gather,
        })
    }

    /// Check in SQL that the books balance and agree with `totals`, what the
    /// load generator saw over the whole run (warm-up included).
    pub async fn audit(&self, totals: &Totals) -> anyhow::Result<Audit> {
        let Some(session) = self.sessions.first() else { bail!("no connection") };
        let mut session = session.lock().await;
        session.end_abandoned_transaction().await.context("audit: rolling back")?;
        let client = &session.client;
        let mut checks = Vec::new();

        let settings = client
            .query_one("SELECT current_setting('fsync'), current_setting('synchronous_commit')", &[])
            .await
            .context("audit: reading the settings")?;
        let (fsync, synchronous_commit): (String, String) = (settings.get(0), settings.get(1));
        checks.push(AuditCheck {
            name: "commits were durable (fsync on, synchronous_commit on)".to_owned(),
            holds: fsync == "on" && synchronous_commit == "on",
            detail: format!("fsync={fsync}, synchronous_commit={synchronous_commit}"),
        });

        if self.standbys > 0 {
            let standbys = synchronous_standbys(client).await.context("audit: reading the standbys")?;
            checks.push(AuditCheck {
                name: "every commit waited for a standby's flush (synchronous standbys streaming)".to_owned(),
                holds: standbys == self.standbys,
                detail: format!("{standbys} of the {} synchronous standbys at the start stream", self.standbys),
            });
        }

        let rows = client
            .query(
                "SELECT currency, sum(debits_posted)::text, sum(credits_posted)::text,
                        sum(debits_posted) = sum(credits_posted)
                 FROM accounts GROUP BY currency ORDER BY currency",
                &[],
            )
            .await
            .context("audit: summing positions")?;
        let balanced = !rows.is_empty() && rows.iter().all(|r| r.get::<_, bool>(3));
        let detail = rows
            .iter()
            .map(|r| {
                format!("{}: debits {} credits {}", r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2))
            })
            .collect::<Vec<_>>()
            .join("; ");
        checks.push(AuditCheck { name: "debits equal credits in every currency".to_owned(), holds: balanced, detail });

        let beyond: i64 = client
            .query_one(
                "SELECT count(*) FROM accounts
                 WHERE net_debit_cap IS NOT NULL AND debits_posted > credits_posted + net_debit_cap",
                &[],
            )
            .await
            .context("audit: checking caps")?
            .get(0);
        checks.push(AuditCheck {
            name: "no account is beyond its net debit cap".to_owned(),
            holds: beyond == 0,
            detail: format!("{beyond} accounts beyond their cap"),
        });

        let transfers: i64 =
            client.query_one("SELECT count(*) FROM transfers", &[]).await.context("audit: counting transfers")?.get(0);
        let transfers = u64::try_from(transfers).unwrap_or(0);
        // A failed attempt (an error or a timeout at COMMIT) may have committed
        // after all: its outcome is unknown, so it widens the range.
        let holds = transfers >= totals.committed && transfers <= totals.committed + totals.failed;
        let detail = if totals.failed == 0 {
            format!("{transfers} rows, {} committed", totals.committed)
        } else {
            format!(
                "{transfers} rows, {} committed and {} failed with an unknown outcome",
                totals.committed, totals.failed
            )
        };
        checks.push(AuditCheck { name: "transfer rows equal committed transfers".to_owned(), holds, detail });
        if self.shape == Shape::Spread {
            // The spread shape keeps no entries.
            return Ok(Audit::new(checks));
        }

        let row = client
            .query_one(
                "WITH d AS (SELECT debit AS id, sum(amount) AS s FROM entries GROUP BY debit),
                      c AS (SELECT credit AS id, sum(amount) AS s FROM entries GROUP BY credit)
                 SELECT
                    (SELECT count(*) FROM accounts a LEFT JOIN d ON d.id = a.id LEFT JOIN c ON c.id = a.id
                     WHERE a.debits_posted <> coalesce(d.s, 0) OR a.credits_posted <> coalesce(c.s, 0)),
                    (SELECT count(*) FROM entries WHERE transfer_partner <> $1),
                    (SELECT count(*) FROM transfers)",
                &[&SETUP_PARTNER],
            )
            .await
            .context("audit: comparing entries with positions")?;
        let (disagreeing, entries, transfer_rows): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        checks.push(AuditCheck {
            name: "ledger entries agree with account positions".to_owned(),
            holds: disagreeing == 0 && entries == 3 * transfer_rows,
            detail: format!(
                "{disagreeing} accounts disagree with their entries; {entries} entries for {transfer_rows} transfers"
            ),
        });
        Ok(Audit::new(checks))
    }
}

impl Session {
    async fn open(url: &str, schema: &str) -> anyhow::Result<Session> {
        let client = connect(url).await?;
        // synchronous_commit = on is PostgreSQL's default; set it anyway so a
        // server configured otherwise cannot flatter the baseline.
        client.batch_execute(&format!("SET synchronous_commit = on; SET search_path = {schema};")).await?;
        let statements = Statements {
            begin: client.prepare("BEGIN").await?,
            insert_transfer: client
                .prepare(
                    "INSERT INTO transfers (partner, idempotency_key, amount, fee)
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .await?,
            debit_payer: client
                .prepare(
                    "UPDATE accounts SET debits_posted = debits_posted + $2
                     WHERE id = $1 AND debits_posted + $2 <= credits_posted + net_debit_cap
                     RETURNING debits_posted",
                )
                .await?,
            credit: client.prepare("UPDATE accounts SET credits_posted = credits_posted + $2 WHERE id = $1").await?,
            clear: client
                .prepare(
                    "UPDATE accounts SET debits_posted = debits_posted + $2, credits_posted = credits_posted + $2
                     WHERE id = $1",
                )
                .await?,
            insert_entries: client
                .prepare(
                    "INSERT INTO entries (transfer_partner, transfer_key, debit, credit, amount) VALUES
                     ($1::text, $2::text, $3::text, $4::text, $7::bigint),
                     ($1, $2, $3, $5::text, $8::bigint),
                     ($1, $2, $4, $6::text, $7)",
                )
                .await?,
            commit: client.prepare("COMMIT").await?,
            rollback: client.prepare("ROLLBACK").await?,
        };
        Ok(Session { client, statements, in_transaction: false })
    }

    /// Roll back a transaction an abandoned attempt may have left open.
    async fn end_abandoned_transaction(&mut self) -> Result<(), tokio_postgres::Error> {
        if self.in_transaction {
            self.client.execute(&self.statements.rollback, &[]).await?;
            self.in_transaction = false;
        }
        Ok(())
    }

    /// One transfer in its own transaction, made again (a few times) when
    /// a deadlock with a batch made it the victim: batches lock many rows,
    /// and PostgreSQL's answer to a deadlock is to abort one side.
    async fn transfer(&mut self, shape: Shape, transfer: &Transfer) -> Attempt {
        let mut attempt = self.transfer_once(shape, transfer).await;
        for _ in 0..DEADLOCK_RETRIES {
            if !deadlocked(&attempt) {
                break;
            }
            attempt = self.transfer_once(shape, transfer).await;
        }
        attempt
    }

    async fn transfer_once(&mut self, shape: Shape, transfer: &Transfer) -> Attempt {
        if let Err(e) = self.end_abandoned_transaction().await {
            return Attempt::Failed(format!("postgres: rolling back an abandoned transaction: {e}"));
        }
        // Set before BEGIN is sent: if this future is dropped at any await
        // below, the next attempt on this connection rolls back first.
        self.in_transaction = true;
        // The spread shape has nothing to decline before taking a row, so
        // one transfer is a batch of one.
        let outcome = match shape {
            Shape::Hot => self.try_transfer(transfer).await,
            Shape::Spread => {
                self.try_batch(shape, &[transfer]).await.map_or_else(|attempt| attempt, |()| Attempt::Committed)
            }
        };
        let ended =
            matches!(outcome, Attempt::Committed) || self.client.execute(&self.statements.rollback, &[]).await.is_ok();
        if ended {
            self.in_transaction = false;
        }
        outcome
    }

    /// Several transfers in one transaction, when none is declined;
    /// otherwise each in its own, as a batch of one (so every transaction of
    /// a batched run locks rows in the same order, see
    /// [`Session::try_batch`]), a deadlock's victim made again.
    async fn transfers(&mut self, shape: Shape, transfers: &[Transfer]) -> Vec<Attempt> {
        // Payers in id order, as each class is locked (see try_batch).
        let mut ordered: Vec<&Transfer> = transfers.iter().collect();
        ordered.sort_by(|a, b| (&a.payer, &a.payee).cmp(&(&b.payer, &b.payee)));
        if ordered.len() > 1 && matches!(self.batch_once(shape, &ordered).await, Attempt::Committed) {
            return transfers.iter().map(|_| Attempt::Committed).collect();
        }
        let mut each = Vec::with_capacity(transfers.len());
        for transfer in transfers {
            let mut attempt = self.batch_once(shape, &[transfer]).await;
            for _ in 0..DEADLOCK_RETRIES {
                if !deadlocked(&attempt) {
                    break;
                }
                attempt = self.batch_once(shape, &[transfer]).await;
            }
            each.push(attempt);
        }
        each
    }

    /// One [`Session::try_batch`] transaction, rolled back unless it
    /// committed.
    async fn batch_once(&mut self, shape: Shape, transfers: &[&Transfer]) -> Attempt {
        if let Err(e) = self.end_abandoned_transaction().await {
            return failed("rolling back an abandoned transaction: ", &e);
        }
        self.in_transaction = true;
        let outcome = match self.try_batch(shape, transfers).await {
            Ok(()) => Attempt::Committed,
            Err(attempt) => attempt,
        };
        let ended =
            matches!(outcome, Attempt::Committed) || self.client.execute(&self.statements.rollback, &[]).await.is_ok();
        if ended {
            self.in_transaction = false;
        }
        outcome
    }

    /// Transfers in one transaction, up to and including COMMIT; `Err`
    /// says why not (declined, when any would be; or the error), and the
    /// caller rolls back. The statements are pipelined by class, so that
    /// every transaction of a batched run locks rows in one order (the fee
    /// row and the clearing row first, then payers and payees, each class
    /// by id) and batches never deadlock: in the hot shape one update of
    /// the fee row and one of the clearing row for the whole batch (what
    /// batching saves on hot rows; taken first, they make the batches take
    /// turns, one commit each, as paymesh's entries do), then the transfer
    /// rows, the payers' debits, the payees' credits and the hot shape's
    /// entries. `transfers` come sorted by payer.
    async fn try_batch(&self, shape: Shape, transfers: &[&Transfer]) -> Result<(), Attempt> {
        let (client, st) = (&self.client, &self.statements);
        let hot = shape == Shape::Hot;
        // The spread shape charges no fee.
        let fee = |t: &Transfer| if hot { t.fee } else { 0 };
        let fees_of: Vec<i64> = transfers.iter().map(|t| fee(t)).collect();
        let debits: Vec<i64> = transfers.iter().map(|t| t.amount + fee(t)).collect();
        let cleared: i64 = transfers.iter().map(|t| t.amount).sum();
        let fees: i64 = fees_of.iter().sum();
        type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;
        let inserts: Vec<Params<'_>> = transfers
            .iter()
            .zip(&fees_of)
            .map(|(t, f)| vec![&t.partner as _, &t.key as _, &t.amount as _, f as _])
            .collect();
        let debit_params: Vec<Params<'_>> =
            transfers.iter().zip(&debits).map(|(t, d)| vec![&t.payer as _, d as _]).collect();
        let mut by_payee: Vec<&&Transfer> = transfers.iter().collect();
        by_payee.sort_by(|a, b| a.payee.cmp(&b.payee));
        let credits: Vec<Params<'_>> = by_payee.iter().map(|t| vec![&t.payee as _, &t.amount as _]).collect();
        let clearing: Params<'_> = vec![&CLEARING, &cleared];
        let fee_row: Params<'_> = vec![&FEES, &fees];
        let entries: Vec<Params<'_>> = transfers
            .iter()
            .map(|t| {
                vec![
                    &t.partner as _,
                    &t.key as _,
                    &t.payer as _,
                    &CLEARING as _,
                    &FEES as _,
                    &t.payee as _,
                    &t.amount as _,
                    &t.fee as _,
                ]
            })
            .collect();
        // Each statement's rows, in order; a debit counts its row.
        let mut statements: Vec<BoxFuture<'_, Result<u64, tokio_postgres::Error>>> = Vec::new();
        if hot {
            statements.push(client.execute(&st.credit, &fee_row).boxed());
            statements.push(client.execute(&st.clear, &clearing).boxed());
        }
        statements.extend(inserts.iter().map(|p| client.execute(&st.insert_transfer, p).boxed()));
        statements.extend(
            debit_params
                .iter()
                .map(|p| client.query_opt(&st.debit_payer, p).map(|r| r.map(|row| u64::from(row.is_some()))).boxed()),
        );
        statements.extend(credits.iter().map(|p| client.execute(&st.credit, p).boxed()));
        if hot {
            statements.extend(entries.iter().map(|p| client.execute(&st.insert_entries, p).boxed()));
        }
        let (_, counts) = futures::try_join!(client.execute(&st.begin, &[]), futures::future::try_join_all(statements))
            .map_err(|e| failed("", &e))?;
        let rows = 3 * transfers.len() + if hot { 2 } else { 0 };
        let (rows, entries_written) = counts.split_at(rows);
        if rows.iter().any(|&c| c != 1) || entries_written.iter().any(|&c| c != 3) {
            return Err(Attempt::Declined("insufficient position or already done".to_owned()));
        }
        client.execute(&st.commit, &[]).await.map(drop).map_err(|e| failed("COMMIT: ", &e))
    }

    /// The transaction, up to and including COMMIT; anything but `Committed`
    /// leaves it for the caller to roll back.
    async fn try_transfer(&self, t: &Transfer) -> Attempt {
        let (client, st) = (&self.client, &self.statements);
        let debit = t.amount + t.fee;
        // Parameters outlive the pipelined futures that borrow them.
        let insert_params: [&(dyn ToSql + Sync); 4] = [&t.partner, &t.key, &t.amount, &t.fee];
        let debit_params: [&(dyn ToSql + Sync); 2] = [&t.payer, &debit];
        let first = futures::try_join!(
            client.execute(&st.begin, &[]),
            client.execute(&st.insert_transfer, &insert_params),
            client.query_opt(&st.debit_payer, &debit_params),
        );
        match first {
            Err(e) => return failed("", &e),
            Ok((_, 0, _)) => return Attempt::Declined("already done".to_owned()),
            Ok((_, _, None)) => return Attempt::Declined("insufficient position".to_owned()),
            Ok((_, _, Some(_))) => {}
        }
        let payee_params: [&(dyn ToSql + Sync); 2] = [&t.payee, &t.amount];
        let clearing_params: [&(dyn ToSql + Sync); 2] = [&CLEARING, &t.amount];
        let fees_params: [&(dyn ToSql + Sync); 2] = [&FEES, &t.fee];
        let entries_params: [&(dyn ToSql + Sync); 8] =
            [&t.partner, &t.key, &t.payer, &CLEARING, &FEES, &t.payee, &t.amount, &t.fee];
        let second = futures::try_join!(
            client.execute(&st.credit, &payee_params),
            client.execute(&st.clear, &clearing_params),
            client.execute(&st.credit, &fees_params),
            client.execute(&st.insert_entries, &entries_params),
        );
        match second {
            Err(e) => return failed("", &e),
            Ok((1, 1, 1, 3)) => {}
            Ok(counts) => return Attempt::Failed(format!("postgres: an account is missing (rows updated {counts:?})")),
        }
        match client.execute(&st.commit, &[]).await {
            Ok(_) => Attempt::Committed,
            Err(e) => failed("COMMIT: ", &e),
        }
    }
}

/// Start one task per connection that takes the transfers waiting (up to
/// `batch`) whenever its connection is free and makes them in one
/// transaction; the queue they wait in. The tasks end when the queue's
/// sender is dropped.
fn gather(sessions: Arc<Vec<Mutex<Session>>>, shape: Shape, batch: usize) -> mpsc::Sender<Waiting> {
    let (queue, waiting) = mpsc::channel::<Waiting>(batch * sessions.len().max(1) * 2);
    let waiting = Arc::new(Mutex::new(waiting));
    for index in 0..sessions.len() {
        let (sessions, waiting) = (sessions.clone(), waiting.clone());
        tokio::spawn(async move {
            loop {
                let taken = {
                    let mut waiting = waiting.lock().await;
                    let Some(first) = waiting.recv().await else { break };
                    let mut taken = vec![first];
                    while taken.len() < batch {
                        match waiting.try_recv() {
                            Ok(next) => taken.push(next),
                            Err(_) => break,
                        }
                    }
                    taken
                };
                let (transfers, answers): (Vec<Transfer>, Vec<oneshot::Sender<Attempt>>) = taken.into_iter().unzip();
                let attempts = sessions[index].lock().await.transfers(shape, &transfers).await;
                for (answer, attempt) in answers.into_iter().zip(attempts) {
                    let _ = answer.send(attempt);
                }
            }
        });
    }
    queue
}

impl Target for PostgresTarget {
    fn name(&self) -> String {
        let name = match (self.shape, self.batch) {
            (Shape::Hot, 1) => "postgres".to_owned(),
            (Shape::Spread, 1) => "postgres-spread".to_owned(),
            (Shape::Hot, n) => format!("postgres-b{n}"),
            (Shape::Spread, n) => format!("postgres-spread-b{n}"),
        };
        match self.standbys {
            0 => name,
            standbys => format!("{name}-r{}", standbys + 1),
        }
    }

    async fn transfer(&self, worker: usize, sequence: u64) -> Attempt {
        let transfer = Transfer::new(worker, sequence, self.payers, self.payees);
        if let Some(gather) = &self.gather {
            let (answer, answered) = oneshot::channel();
            if gather.send((transfer, answer)).await.is_err() {
                return Attempt::Failed("postgres: the batches' tasks ended".to_owned());
            }
            return answered.await.unwrap_or_else(|_| Attempt::Failed("postgres: the batch was dropped".to_owned()));
        }
        let Some(session) = self.sessions.get(worker % self.sessions.len().max(1)) else {
            return Attempt::Failed("postgres: no connection".to_owned());
        };
        session.lock().await.transfer(self.shape, &transfer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_are_the_workload_s_picks() {
        for worker in 0..8 {
            for sequence in 0..1_000 {
                let t = Transfer::new(worker, sequence, 64, 16);
                let pick = Pick::new(worker, sequence, 64, 16);
                assert_eq!((t.payer.clone(), t.payee.clone()), (payer_id(pick.payer), payee_id(pick.payee)));
                assert_eq!((t.amount, t.fee), (pick.amount_minor, pick.fee_minor()));
                assert!(t.fee > 0, "{t:?}");
                assert!(t.payer.as_str() >= "payer:00000" && t.payer.as_str() <= "payer:00063", "{t:?}");
                assert!(t.payee.as_str() >= "payee:00000" && t.payee.as_str() <= "payee:00015", "{t:?}");
            }
        }
        // Idempotency keys are unique per (worker, sequence).
        let a = Transfer::new(1, 2, 64, 16);
        let b = Transfer::new(2, 1, 64, 16);
        assert_ne!((a.partner, a.key), (b.partner, b.key));
    }

    #[test]
    fn payers_and_payees_are_spread() {
        let mut payers = std::collections::BTreeSet::new();
        let mut payees = std::collections::BTreeSet::new();
        for sequence in 0..2_000 {
            let t = Transfer::new(3, sequence, 64, 16);
            payers.insert(t.payer);
            payees.insert(t.payee);
        }
        assert_eq!(payers.len(), 64);
        assert_eq!(payees.len(), 16);
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(checked_schema("paymesh_bench").is_ok());
        assert!(checked_schema("b2").is_ok());
        for bad in ["", "2b", "Bench", "a;drop", "a b", "a-b"] {
            assert!(checked_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_do_not_show_the_password() {
        let text = describe("postgres://bench:secret@127.0.0.1:55432/paymesh_bench");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("127.0.0.1") && text.contains("55432") && text.contains("paymesh_bench"), "{text}");
    }
}

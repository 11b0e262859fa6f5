//! `paymesh.admin.v1.AdminService`: what operators call, with an operator
//! certificate. Writes are proposed through the leader; reads come from this
//! node's applied state.

use std::pin::Pin;

use futures::Stream;
use paymesh_core::command::{CommandBody, Reason};
use paymesh_core::fx::FxRate;
use paymesh_core::history::Recall;
use paymesh_core::id::{OperatorId, PartnerId, RegionId, TopUpRef};
use paymesh_core::partner::PartnerConfig;
use paymesh_core::settings::{
    RegionSetting, CANCEL_WINDOW_MINUTES_MAX, IDEMPOTENCY_RETENTION_DAYS_MAX, IDEMPOTENCY_RETENTION_DAYS_MIN,
    REFUND_WINDOW_DAYS_MAX,
};
use paymesh_core::webhook::{Webhook, WebhookSecret, WebhookUrl};
use paymesh_core::{Money, Outcome, RejectCode, SignedMoney};
use paymesh_proto::admin::v1 as wire;
use paymesh_proto::admin::v1::admin_service_server::AdminService;
use paymesh_proto::common::v1 as common;
use tonic::{Request, Response, Status};

use crate::convert::{self, invalid};
use crate::gateway::Gateway;

/// The most of its windows a region reads for another region's window.
const RECEIVED_WINDOWS_READ_MAX: usize = 10_000;

/// The most records in one List page, and the default.
const PAGE_SIZE_MAX: u32 = 500;
const PAGE_SIZE_DEFAULT: u32 = 100;

/// Serves the admin API of one node.
#[derive(Clone, Debug)]
pub struct AdminServer {
    gateway: Gateway,
}

impl AdminServer {
    /// The service over `gateway`.
    pub fn new(gateway: Gateway) -> AdminServer {
        AdminServer { gateway }
    }

    /// The region's settings as of this node's applied index.
    fn region_settings(&self) -> wire::RegionSettings {
        convert::region_settings(self.gateway.state_machine.applied().state.settings())
    }

    /// A partner's position as this node applied it, after a top-up or a
    /// fund-out that was not refused.
    fn position_after(&self, partner: &PartnerId, reject_code: i32) -> Option<common::Position> {
        let applied = self.gateway.state_machine.applied();
        applied.state.position(partner).map(|p| convert::position_out(&p)).filter(|_| reject_code == 0)
    }

    /// Propose an operator command; Ok(0) when done, or the reject code (or
    /// status) otherwise. Every write is logged with the operator who made it
    /// and its outcome.
    async fn apply(&self, operator: &str, body: CommandBody) -> Result<i32, Status> {
        self.apply_for(operator, body).await.map(|(code, _)| code)
    }

    /// [`AdminServer::apply`], with the outcome of a command done.
    async fn apply_for(&self, operator: &str, body: CommandBody) -> Result<(i32, Outcome), Status> {
        let command = format!("{body:?}");
        // The name was checked when the caller was identified; applied and
        // audited with it.
        let outcome = self.gateway.operate_by(operator, body).await;
        match &outcome {
            Ok(outcome) => tracing::info!(operator, command, ?outcome, "operator write"),
            Err(status) => tracing::info!(operator, command, code = ?status.code(), "operator write not applied"),
        }
        let outcome = outcome?;
        match outcome {
            Outcome::Rejected(code) => Ok((Gateway::rejected(code)?, outcome)),
            Outcome::Done | Outcome::WindowClosed { .. } => Ok((0, outcome)),
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    /// A settlement window as this node holds it: the open one (0), or a
    /// closed one from history.
    /// A partner's webhook as the applied state holds it, if it has one.
    fn webhook_out(&self, partner: &PartnerId) -> Option<wire::Webhook> {
        let applied = self.gateway.state_machine.applied();
        applied.state.webhook(partner).map(|hook| self.webhook_view(&applied.state, partner, hook))
    }

    /// A webhook with its progress and, on the leader, what its deliveries
    /// are doing.
    fn webhook_view(&self, state: &paymesh_core::State, partner: &PartnerId, hook: &Webhook) -> wire::Webhook {
        let live = self.gateway.webhooks.live(partner).filter(|_| hook.dead_letter.is_none()).unwrap_or_default();
        let previous = hook.previous.as_ref().filter(|p| state.clock() < p.until);
        let state_code =
            if hook.dead_letter.is_some() { wire::WebhookState::DeadLettered } else { wire::WebhookState::Active };
        wire::Webhook {
            partner_id: partner.to_string(),
            url: hook.url.as_str().to_owned(),
            secret_fingerprint: hook.secret.fingerprint(),
            previous_secret_fingerprint: previous.map(|p| p.secret.fingerprint()).unwrap_or_default(),
            previous_secret_until_unix_ms: previous.map_or(0, |p| convert::unix_ms(p.until)),
            delivered_cursor: hook.delivered,
            newest_cursor: state.last_cursor(partner),
            state: state_code as i32,
            dead_lettered_at_unix_ms: hook.dead_letter.as_ref().map_or(0, |d| convert::unix_ms(d.at)),
            dead_letter_reason: hook.dead_letter.as_ref().map(|d| d.reason.as_str().to_owned()).unwrap_or_default(),
            failures: live.failures,
            last_error: live.last_error.unwrap_or_default(),
            next_attempt_unix_ms: live.next_attempt_unix_ms.map_or(0, |at| i64::try_from(at).unwrap_or(i64::MAX)),
            generation: hook.generation,
        }
    }

    /// A corridor of this region as the applied state holds it now.
    fn stored_corridor(&self, id: &paymesh_core::corridor::CorridorId) -> Option<wire::Corridor> {
        let applied = self.gateway.state_machine.applied();
        applied.state.corridor(id).map(|c| convert::corridor_out(c, applied.state.refund_rate(id)))
    }

    fn settlement_window(&self, number: u64) -> Result<wire::SettlementWindow, Status> {
        let applied = self.gateway.state_machine.applied();
        let state = &applied.state;
        let window = if number == 0 || number == state.settlement_window() {
            state.open_window()
        } else if number > state.settlement_window() {
            return Err(Status::not_found(format!("WindowNotFound: the open window is {}", state.settlement_window())));
        } else {
            Recall::window(self.gateway.state_machine.history(), number)
                .ok_or_else(|| Status::not_found(format!("WindowNotFound: window {number} is not in history")))?
        };
        let in_flight =
            |region: &RegionId| if window.is_closed() { state.decisions_in_flight(region, number) } else { 0 };
        Ok(convert::settlement_window_out(&window, in_flight))
    }
}

/// The fields of a top-up or a fund-out, parsed.
fn funding(
    partner_id: &str,
    amount: Option<&common::Money>,
    reference: &str,
) -> Result<(PartnerId, Money, TopUpRef), Status> {
    Ok((
        convert::partner_id("partner_id", partner_id)?,
        convert::positive_money("amount", amount)?,
        convert::top_up_ref("reference", reference)?,
    ))
}

fn page_size(requested: u32) -> usize {
    let size = match requested {
        0 => PAGE_SIZE_DEFAULT,
        n => n.min(PAGE_SIZE_MAX),
    };
    size as usize
}

/// Page through `items` (sorted by `key`) after `token`; returns the page and
/// the next token.
fn page<T, K: ToString>(
    items: impl Iterator<Item = T>,
    key: impl Fn(&T) -> K,
    token: &str,
    size: usize,
) -> (Vec<T>, String) {
    let mut page: Vec<T> =
        items.skip_while(|item| !token.is_empty() && key(item).to_string().as_str() <= token).take(size + 1).collect();
    let next = if page.len() > size {
        page.truncate(size);
        page.last().map(|item| key(item).to_string()).unwrap_or_default()
    } else {
        String::new()
    };
    (page, next)
}

/// A reconciliation file's chunks.
type FileStream = Pin<Box<dyn Stream<Item = Result<wire::SettlementFileChunk, Status>> + Send>>;

/// The largest chunk of a reconciliation file (well under the 1 MiB a
/// client of the SDK accepts per message).
const FILE_CHUNK_BYTES: usize = 512 * 1024;

impl AdminServer {
    /// Build a reconciliation file (blocking: it reads history).
    fn settlement_file(&self, r: &wire::GetSettlementFileRequest) -> Result<(String, &'static str, String), Status> {
        use crate::settlement_files::{self as files, FileError, FileKind};
        let partner = convert::partner_id("partner_id", &r.partner_id)?;
        let kind = match wire::SettlementFileKind::try_from(r.kind) {
            Ok(wire::SettlementFileKind::Transactions) => FileKind::Transactions,
            Ok(wire::SettlementFileKind::Summary) => FileKind::Summary,
            Ok(wire::SettlementFileKind::Camt053) => FileKind::Camt053,
            Ok(wire::SettlementFileKind::Pacs008) => FileKind::Pacs008,
            _ => return Err(invalid("kind", "TRANSACTIONS, SUMMARY, CAMT053 or PACS008")),
        };
        let applied = self.gateway.state_machine.applied();
        let state = &applied.state;
        let Some(found) = state.partner(&partner) else {
            return Err(Status::not_found(format!("PartnerNotFound: {partner} is not a partner of this region")));
        };
        if found.config.region != *state.region() {
            return Err(Status::failed_precondition(format!(
                "PartnerNotInRegion: {partner} is homed in {}, which writes its files",
                found.config.region
            )));
        }
        if r.window == 0 || r.window >= state.settlement_window() {
            return Err(Status::failed_precondition(format!(
                "WindowNotClosed: window {} is not a closed window (the open one is {})",
                r.window,
                state.settlement_window()
            )));
        }
        let history = self.gateway.state_machine.history();
        let window = Recall::window(history, r.window)
            .ok_or_else(|| Status::not_found(format!("WindowNotFound: window {} is not in history", r.window)))?;
        let account = paymesh_core::State::position_account(&found.config);
        let lines = files::lines(history, &window, &account).map_err(|e| match e {
            FileError::NotFound(m) => Status::not_found(m),
            FileError::TooLarge(m) => Status::resource_exhausted(m),
            FileError::History(m) => Status::internal(m),
        })?;
        let region = state.region().to_string();
        let now = crate::gateway::now();
        let content = match kind {
            FileKind::Transactions => files::transactions(r.window, &partner, &lines),
            FileKind::Summary => files::summary(&window, &partner, &account, &lines),
            FileKind::Camt053 => files::camt053(&region, &window, &partner, &account, &lines, now),
            FileKind::Pacs008 => {
                let crossings = files::crossings(&lines, history);
                if crossings.is_empty() {
                    // pacs.008 holds one transaction at least.
                    return Err(Status::not_found(format!(
                        "no cross-border payment of {partner} was posted in window {} here",
                        r.window
                    )));
                }
                files::pacs008(&region, &window, &partner, &crossings, now)
            }
        };
        let (name, media_type) = kind.name(&region, r.window, &partner);
        Ok((name, media_type, content))
    }
}

#[tonic::async_trait]
impl AdminService for AdminServer {
    type GetSettlementFileStream = FileStream;

    async fn get_settlement_file(
        &self,
        request: Request<wire::GetSettlementFileRequest>,
    ) -> Result<Response<Self::GetSettlementFileStream>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let server = self.clone();
        let (name, media_type, content) = tokio::task::spawn_blocking(move || server.settlement_file(&r))
            .await
            .map_err(|e| Status::internal(format!("building the file: {e}")))??;
        tracing::info!(operator, file = name, bytes = content.len(), "settlement file read");
        let bytes = content.into_bytes();
        let mut chunks: Vec<wire::SettlementFileChunk> = bytes
            .chunks(FILE_CHUNK_BYTES)
            .map(|data| wire::SettlementFileChunk {
                file_name: String::new(),
                media_type: String::new(),
                data: data.to_vec(),
            })
            .collect();
        match chunks.first_mut() {
            Some(first) => {
                first.file_name = name;
                first.media_type = media_type.to_owned();
            }
            None => chunks.push(wire::SettlementFileChunk {
                file_name: name,
                media_type: media_type.to_owned(),
                data: Vec::new(),
            }),
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks.into_iter().map(Ok)))))
    }

    async fn set_region_settings(
        &self,
        request: Request<wire::SetRegionSettingsRequest>,
    ) -> Result<Response<wire::SetRegionSettingsResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        // Each value is checked here, so the operator reads why; the core
        // checks again.
        let mut settings = Vec::new();
        if let Some(days) = r.idempotency_retention_days {
            let bounds = IDEMPOTENCY_RETENTION_DAYS_MIN..=IDEMPOTENCY_RETENTION_DAYS_MAX;
            if !bounds.contains(&days) {
                return Err(Status::invalid_argument(format!(
                    "idempotency_retention_days: {days} is outside {IDEMPOTENCY_RETENTION_DAYS_MIN} to \
                     {IDEMPOTENCY_RETENTION_DAYS_MAX} (history keeps at least {IDEMPOTENCY_RETENTION_DAYS_MAX} days)"
                )));
            }
            settings.push(RegionSetting::IdempotencyRetentionDays(days));
        }
        if let Some(days) = r.refund_window_days {
            if days > REFUND_WINDOW_DAYS_MAX {
                return Err(Status::invalid_argument(format!(
                    "refund_window_days: {days} is above {REFUND_WINDOW_DAYS_MAX} (history keeps every transfer at \
                     least {REFUND_WINDOW_DAYS_MAX} days)"
                )));
            }
            settings.push(RegionSetting::RefundWindowDays(days));
        }
        if let Some(minutes) = r.cancel_window_minutes {
            if minutes > CANCEL_WINDOW_MINUTES_MAX {
                return Err(Status::invalid_argument(format!(
                    "cancel_window_minutes: {minutes} is above {CANCEL_WINDOW_MINUTES_MAX} (a week)"
                )));
            }
            settings.push(RegionSetting::CancelWindowMinutes(minutes));
        }
        for setting in settings {
            let reject_code = self.apply(&operator, CommandBody::SetRegionSetting(setting)).await?;
            if reject_code != 0 {
                return Err(Status::internal(format!("the setting was refused with code {reject_code}")));
            }
        }
        Ok(Response::new(wire::SetRegionSettingsResponse { settings: Some(self.region_settings()) }))
    }

    async fn reverse_transfer(
        &self,
        request: Request<wire::ReverseTransferRequest>,
    ) -> Result<Response<wire::ReverseTransferResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let transfer = convert::transfer_id("transfer_id", &r.transfer_id)?;
        let reason = Reason::new(r.reason).map_err(|e| invalid("reason", e))?;
        let by = OperatorId::new(&operator).map_err(|e| Status::permission_denied(format!("operator name: {e}")))?;
        let body = CommandBody::ReverseTransfer { transfer, reason };
        tracing::info!(operator, command = ?body, "operator write");
        match self.gateway.operate(CommandBody::ByOperator { operator: by, command: Box::new(body) }).await? {
            Outcome::Refund(view) => {
                let reject_code = convert::reject_code_opt(view.reason.filter(|_| view.state.is_final()));
                let refund = Some(convert::refund_out(&view));
                Ok(Response::new(wire::ReverseTransferResponse { refund, reject_code }))
            }
            Outcome::Rejected(code) => {
                Ok(Response::new(wire::ReverseTransferResponse { refund: None, reject_code: Gateway::rejected(code)? }))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }

    async fn close_settlement_window(
        &self,
        request: Request<wire::CloseSettlementWindowRequest>,
    ) -> Result<Response<wire::CloseSettlementWindowResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let (_, outcome) = self.apply_for(&operator, CommandBody::CloseSettlementWindow).await?;
        let Outcome::WindowClosed { number } = outcome else {
            return Err(Status::internal(format!("unexpected outcome {outcome:?}")));
        };
        Ok(Response::new(wire::CloseSettlementWindowResponse { window: Some(self.settlement_window(number)?) }))
    }

    async fn get_settlement_window(
        &self,
        request: Request<wire::GetSettlementWindowRequest>,
    ) -> Result<Response<wire::GetSettlementWindowResponse>, Status> {
        self.gateway.operator(&request)?;
        let window = self.settlement_window(request.get_ref().number)?;
        let open_number = self.gateway.state_machine.applied().state.settlement_window();
        Ok(Response::new(wire::GetSettlementWindowResponse { window: Some(window), open_number }))
    }

    async fn record_settlement(
        &self,
        request: Request<wire::RecordSettlementRequest>,
    ) -> Result<Response<wire::RecordSettlementResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        if r.window == 0 {
            return Err(invalid("window", "a closed window's number, 1 or more"));
        }
        let account = convert::account_id("account", &r.account)?;
        let reference = TopUpRef::new(r.reference).map_err(|e| invalid("reference", e))?;
        let body = CommandBody::RecordSettlement { window: r.window, account, reference };
        let reject_code = self.apply(&operator, body).await?;
        let window = self.settlement_window(r.window).ok();
        Ok(Response::new(wire::RecordSettlementResponse { window, reject_code }))
    }

    async fn get_received_tallies(
        &self,
        request: Request<wire::GetReceivedTalliesRequest>,
    ) -> Result<Response<wire::GetReceivedTalliesResponse>, Status> {
        self.gateway.operator(&request)?;
        let r = request.into_inner();
        let from = convert::region_id("from_region", &r.from_region)?;
        let not_before = convert::timestamp("not_before_unix_ms", r.not_before_unix_ms)?;
        let applied = self.gateway.state_machine.applied();
        let history = self.gateway.state_machine.history();
        let key = (from, r.window);
        let mut sum = applied.state.open_window().received.remove(&key).unwrap_or_default();
        let mut windows_read = 1;
        let closed = history
            .closed_windows_before(applied.state.settlement_window(), RECEIVED_WINDOWS_READ_MAX)
            .map_err(|e| Status::internal(format!("history: {e}")))?;
        for number in closed {
            let Some(window) = Recall::window(history, number) else { break };
            windows_read += 1;
            if let Some(tallies) = window.received.get(&key) {
                for (tally_key, tally) in tallies.iter() {
                    sum.entry(*tally_key).or_default().merge(tally);
                }
            }
            if window.opened_at < not_before {
                break;
            }
        }
        Ok(Response::new(wire::GetReceivedTalliesResponse { tallies: convert::tallies_out(&sum), windows_read }))
    }

    async fn get_region_settings(
        &self,
        request: Request<wire::GetRegionSettingsRequest>,
    ) -> Result<Response<wire::GetRegionSettingsResponse>, Status> {
        self.gateway.operator(&request)?;
        Ok(Response::new(wire::GetRegionSettingsResponse { settings: Some(self.region_settings()) }))
    }

    async fn upsert_partner(
        &self,
        request: Request<wire::UpsertPartnerRequest>,
    ) -> Result<Response<wire::UpsertPartnerResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let id = convert::partner_id("partner_id", &r.partner_id)?;
        let config = PartnerConfig {
            id: id.clone(),
            region: convert::region_id("home_region", &r.home_region)?,
            role: convert::partner_role("role", r.role)?,
            currency: convert::currency("settlement_currency", &r.settlement_currency)?,
            net_debit_cap: convert::money("net_debit_cap", r.net_debit_cap.as_ref())?,
        };
        let reject_code = self.apply(&operator, CommandBody::UpsertPartner(config)).await?;
        let applied = self.gateway.state_machine.applied();
        let partner = applied.state.partner(&id).map(|p| convert::partner_out(&applied.state, p));
        Ok(Response::new(wire::UpsertPartnerResponse { partner: partner.filter(|_| reject_code == 0), reject_code }))
    }

    async fn set_partner_status(
        &self,
        request: Request<wire::SetPartnerStatusRequest>,
    ) -> Result<Response<wire::SetPartnerStatusResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let partner = convert::partner_id("partner_id", &r.partner_id)?;
        let status = convert::partner_status("status", r.status)?;
        let reject_code =
            self.apply(&operator, CommandBody::SetPartnerStatus { partner: partner.clone(), status }).await?;
        let applied = self.gateway.state_machine.applied();
        let stored = applied.state.partner(&partner).map(|p| convert::partner_out(&applied.state, p));
        Ok(Response::new(wire::SetPartnerStatusResponse { partner: stored.filter(|_| reject_code == 0), reject_code }))
    }

    async fn set_partner_limits(
        &self,
        request: Request<wire::SetPartnerLimitsRequest>,
    ) -> Result<Response<wire::SetPartnerLimitsResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let partner = convert::partner_id("partner_id", &r.partner_id)?;
        let limits = convert::partner_limits("limits", r.limits.as_ref())?;
        let reject_code =
            self.apply(&operator, CommandBody::SetPartnerLimits { partner: partner.clone(), limits }).await?;
        let applied = self.gateway.state_machine.applied();
        let stored = applied.state.partner(&partner).map(|p| convert::partner_out(&applied.state, p));
        Ok(Response::new(wire::SetPartnerLimitsResponse { partner: stored.filter(|_| reject_code == 0), reject_code }))
    }

    async fn get_partner(
        &self,
        request: Request<wire::GetPartnerRequest>,
    ) -> Result<Response<wire::GetPartnerResponse>, Status> {
        self.gateway.operator(&request)?;
        let id = convert::partner_id("partner_id", &request.get_ref().partner_id)?;
        let applied = self.gateway.state_machine.applied();
        let partner = applied.state.partner(&id).ok_or_else(|| Status::not_found(format!("PartnerNotFound: {id}")))?;
        Ok(Response::new(wire::GetPartnerResponse {
            partner: Some(convert::partner_out(&applied.state, partner)),
            positions: applied.state.position(&id).map(|p| convert::position_out(&p)).into_iter().collect(),
            reject_code: 0,
            usage: Some({
                let usage = applied.state.partner_usage(&id);
                wire::PartnerUsage {
                    quotes_outstanding: usage.quotes_outstanding,
                    transfers_in_flight: usage.transfers_in_flight,
                }
            }),
        }))
    }

    async fn list_partners(
        &self,
        request: Request<wire::ListPartnersRequest>,
    ) -> Result<Response<wire::ListPartnersResponse>, Status> {
        self.gateway.operator(&request)?;
        let r = request.into_inner();
        let applied = self.gateway.state_machine.applied();
        let (partners, next_page_token) =
            page(applied.state.partners(), |p| p.config.id.clone(), &r.page_token, page_size(r.page_size));
        Ok(Response::new(wire::ListPartnersResponse {
            partners: partners.into_iter().map(|p| convert::partner_out(&applied.state, p)).collect(),
            next_page_token,
        }))
    }

    async fn upsert_corridor(
        &self,
        request: Request<wire::UpsertCorridorRequest>,
    ) -> Result<Response<wire::UpsertCorridorResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let corridor = convert::corridor_id("corridor", r.corridor.as_ref())?;
        let terms = convert::corridor_terms(&r)?;
        let reject_code =
            self.apply(&operator, CommandBody::UpsertCorridor { corridor: corridor.clone(), terms }).await?;
        let stored = self.stored_corridor(&corridor);
        Ok(Response::new(wire::UpsertCorridorResponse { corridor: stored.filter(|_| reject_code == 0), reject_code }))
    }

    async fn set_corridor_status(
        &self,
        request: Request<wire::SetCorridorStatusRequest>,
    ) -> Result<Response<wire::SetCorridorStatusResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let corridor = convert::corridor_id("corridor", r.corridor.as_ref())?;
        let status = convert::corridor_status("status", r.status)?;
        let reject_code =
            self.apply(&operator, CommandBody::SetCorridorStatus { corridor: corridor.clone(), status }).await?;
        let stored = self.stored_corridor(&corridor);
        Ok(Response::new(wire::SetCorridorStatusResponse {
            corridor: stored.filter(|_| reject_code == 0),
            reject_code,
        }))
    }

    async fn set_corridor_refund_rate(
        &self,
        request: Request<wire::SetCorridorRefundRateRequest>,
    ) -> Result<Response<wire::SetCorridorRefundRateResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let corridor = convert::corridor_id("corridor", r.corridor.as_ref())?;
        let rate = convert::refund_rate_in("refund_rate", r.refund_rate)?;
        let reject_code =
            self.apply(&operator, CommandBody::SetCorridorRefundRate { corridor: corridor.clone(), rate }).await?;
        Ok(Response::new(wire::SetCorridorRefundRateResponse {
            corridor: self.stored_corridor(&corridor).filter(|_| reject_code == 0),
        }))
    }

    async fn get_corridor(
        &self,
        request: Request<wire::GetCorridorRequest>,
    ) -> Result<Response<wire::GetCorridorResponse>, Status> {
        self.gateway.operator(&request)?;
        let id = convert::corridor_id("corridor", request.get_ref().corridor.as_ref())?;
        let applied = self.gateway.state_machine.applied();
        let corridor =
            applied.state.corridor(&id).ok_or_else(|| Status::not_found(format!("CorridorNotFound: {id}")))?;
        let now = crate::gateway::now();
        Ok(Response::new(wire::GetCorridorResponse {
            corridor: Some(convert::corridor_out(corridor, applied.state.refund_rate(&id))),
            rates: corridor
                .rates
                .values()
                .filter(|r| r.valid_until() > now)
                .map(|r| convert::fx_rate_out(&id, r))
                .collect(),
            reject_code: 0,
        }))
    }

    async fn list_corridors(
        &self,
        request: Request<wire::ListCorridorsRequest>,
    ) -> Result<Response<wire::ListCorridorsResponse>, Status> {
        self.gateway.operator(&request)?;
        let r = request.into_inner();
        let applied = self.gateway.state_machine.applied();
        let (corridors, next_page_token) =
            page(applied.state.corridors(), |c| c.id.clone(), &r.page_token, page_size(r.page_size));
        Ok(Response::new(wire::ListCorridorsResponse {
            corridors: corridors
                .into_iter()
                .map(|c| convert::corridor_out(c, applied.state.refund_rate(&c.id)))
                .collect(),
            next_page_token,
        }))
    }

    async fn set_fx_rate(
        &self,
        request: Request<wire::SetFxRateRequest>,
    ) -> Result<Response<wire::SetFxRateResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let corridor = convert::corridor_id("corridor", r.corridor.as_ref())?;
        if corridor.source_currency == corridor.destination_currency {
            // A well-formed request the corridor does not allow: the reject
            // code the contract promises, not a malformed request.
            let reject_code = Gateway::rejected(RejectCode::RateNotApplicable)?;
            return Ok(Response::new(wire::SetFxRateResponse { rate: None, reject_code }));
        }
        let mid = convert::rate("mid_rate", &r.mid_rate)?;
        let from = convert::timestamp("valid_from_unix_ms", r.valid_from_unix_ms)?;
        let until = convert::timestamp("valid_until_unix_ms", r.valid_until_unix_ms)?;
        let rate = FxRate::new(corridor.source_currency, corridor.destination_currency, mid, from, until)
            .map_err(|e| invalid("rate", e))?;
        let stored = convert::fx_rate_out(&corridor, &rate);
        let reject_code = self.apply(&operator, CommandBody::SetFxRate { corridor, rate }).await?;
        Ok(Response::new(wire::SetFxRateResponse { rate: Some(stored).filter(|_| reject_code == 0), reject_code }))
    }

    async fn top_up_position(
        &self,
        request: Request<wire::TopUpPositionRequest>,
    ) -> Result<Response<wire::TopUpPositionResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let (partner, amount, reference) = funding(&r.partner_id, r.amount.as_ref(), &r.reference)?;
        let reject_code =
            self.apply(&operator, CommandBody::TopUp { partner: partner.clone(), amount, reference }).await?;
        Ok(Response::new(wire::TopUpPositionResponse {
            position: self.position_after(&partner, reject_code),
            reject_code,
        }))
    }

    async fn fund_out_position(
        &self,
        request: Request<wire::FundOutPositionRequest>,
    ) -> Result<Response<wire::FundOutPositionResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let (partner, amount, reference) = funding(&r.partner_id, r.amount.as_ref(), &r.reference)?;
        let reject_code =
            self.apply(&operator, CommandBody::FundOut { partner: partner.clone(), amount, reference }).await?;
        Ok(Response::new(wire::FundOutPositionResponse {
            position: self.position_after(&partner, reject_code),
            reject_code,
        }))
    }

    async fn upsert_payee_route(
        &self,
        request: Request<wire::UpsertPayeeRouteRequest>,
    ) -> Result<Response<wire::UpsertPayeeRouteResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let route = paymesh_core::directory::PayeeRoute {
            prefix: convert::qr_prefix("qr_prefix", &r.qr_prefix)?,
            partner: convert::partner_id("payee_partner_id", &r.payee_partner_id)?,
            region: convert::region_id("region", &r.region)?,
            currency: convert::currency("currency", &r.currency)?,
        };
        let stored = convert::route_out(&route);
        let reject_code = self.apply(&operator, CommandBody::UpsertPayeeRoute(route)).await?;
        Ok(Response::new(wire::UpsertPayeeRouteResponse {
            route: Some(stored).filter(|_| reject_code == 0),
            reject_code,
        }))
    }

    async fn remove_payee_route(
        &self,
        request: Request<wire::RemovePayeeRouteRequest>,
    ) -> Result<Response<wire::RemovePayeeRouteResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let prefix = convert::qr_prefix("qr_prefix", &request.get_ref().qr_prefix)?;
        let existed = self.gateway.state_machine.applied().state.directory().contains(&prefix);
        self.apply(&operator, CommandBody::RemovePayeeRoute { prefix }).await?;
        Ok(Response::new(wire::RemovePayeeRouteResponse { removed: existed }))
    }

    async fn list_payee_routes(
        &self,
        request: Request<wire::ListPayeeRoutesRequest>,
    ) -> Result<Response<wire::ListPayeeRoutesResponse>, Status> {
        self.gateway.operator(&request)?;
        let r = request.into_inner();
        let applied = self.gateway.state_machine.applied();
        let (routes, next_page_token) = page(
            applied.state.directory().routes(),
            |route| route.prefix.as_str().to_owned(),
            &r.page_token,
            page_size(r.page_size),
        );
        Ok(Response::new(wire::ListPayeeRoutesResponse {
            routes: routes.into_iter().map(convert::route_out).collect(),
            next_page_token,
        }))
    }

    async fn get_account_statement(
        &self,
        request: Request<wire::GetAccountStatementRequest>,
    ) -> Result<Response<wire::GetAccountStatementResponse>, Status> {
        self.gateway.operator(&request)?;
        let request = request.into_inner();
        let account = convert::account_id("account", &request.account)?;
        let (lines, next_page_token) = convert::statement_page(
            self.gateway.state_machine.history(),
            &account,
            request.from_unix_ms,
            request.to_unix_ms,
            request.page_size,
            &request.page_token,
        )?;
        Ok(Response::new(wire::GetAccountStatementResponse { lines, next_page_token }))
    }

    async fn get_ledger_summary(
        &self,
        request: Request<wire::GetLedgerSummaryRequest>,
    ) -> Result<Response<wire::GetLedgerSummaryResponse>, Status> {
        self.gateway.operator(&request)?;
        let applied = self.gateway.state_machine.applied();
        let totals = |units: u128, currency| {
            let units = i128::try_from(units).unwrap_or(i128::MAX);
            SignedMoney::from_units(units, currency).ok().map(|m| convert::signed_out(&m))
        };
        let currencies = applied
            .state
            .ledger()
            .totals()
            .iter()
            .map(|(currency, t)| wire::CurrencyTotals {
                currency: currency.code().to_owned(),
                debits_posted: totals(t.debits_posted, *currency),
                credits_posted: totals(t.credits_posted, *currency),
                debits_pending: totals(t.debits_pending, *currency),
                credits_pending: totals(t.credits_pending, *currency),
            })
            .collect();
        let copy = applied.clone();
        let verified = tokio::task::spawn_blocking(move || copy.state.verify())
            .await
            .map_err(|e| Status::internal(format!("verify: {e}")))?;
        Ok(Response::new(wire::GetLedgerSummaryResponse {
            currencies,
            balanced: verified.is_ok(),
            violation: verified.err().unwrap_or_default(),
            applied_index: applied.last_applied.map_or(0, |l| l.index),
        }))
    }

    async fn set_webhook(
        &self,
        request: Request<wire::SetWebhookRequest>,
    ) -> Result<Response<wire::SetWebhookResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let partner = convert::partner_id("partner_id", &r.partner_id)?;
        let url = WebhookUrl::new(r.url).map_err(|e| invalid("url", e))?;
        if !url.is_https() && !self.gateway.webhooks.plaintext_allowed() {
            return Err(invalid("url", "must be https:// (http:// only on nodes running without TLS)"));
        }
        let secret = WebhookSecret::new(r.secret).map_err(|e| invalid("secret", e))?;
        let reject_code =
            self.apply(&operator, CommandBody::SetWebhook { partner: partner.clone(), url, secret }).await?;
        Ok(Response::new(wire::SetWebhookResponse {
            webhook: self.webhook_out(&partner).filter(|_| reject_code == 0),
            reject_code,
        }))
    }

    async fn remove_webhook(
        &self,
        request: Request<wire::RemoveWebhookRequest>,
    ) -> Result<Response<wire::RemoveWebhookResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let partner = convert::partner_id("partner_id", &request.get_ref().partner_id)?;
        let reject_code = self.apply(&operator, CommandBody::RemoveWebhook { partner }).await?;
        Ok(Response::new(wire::RemoveWebhookResponse { reject_code }))
    }

    async fn replay_webhook(
        &self,
        request: Request<wire::ReplayWebhookRequest>,
    ) -> Result<Response<wire::ReplayWebhookResponse>, Status> {
        let operator = self.gateway.operator(&request)?;
        let r = request.into_inner();
        let partner = convert::partner_id("partner_id", &r.partner_id)?;
        self.gateway.linearizable().await?;
        let mut after = r.after_cursor;
        {
            let applied = self.gateway.state_machine.applied();
            if applied.state.webhook(&partner).is_none() {
                return Err(Status::not_found(format!("WebhookNotFound: {partner} has no webhook")));
            }
            let newest = applied.state.last_cursor(&partner);
            if r.after_cursor > newest {
                return Err(invalid("after_cursor", format!("{} is beyond the newest event {newest}", r.after_cursor)));
            }
            let history = self.gateway.state_machine.history();
            match applied.state.events_after(&partner, after, 0, history) {
                Ok(_) => {}
                // 0 means from the oldest event history still holds.
                Err(expired) if after == 0 => after = expired.oldest.saturating_sub(1),
                Err(expired) => {
                    return Err(Status::out_of_range(format!(
                        "after_cursor {}: events before {} are no longer retained",
                        expired.requested, expired.oldest
                    )))
                }
            }
        }
        let body = CommandBody::ReplayWebhook { partner: partner.clone(), after };
        let reject_code = self.apply(&operator, body).await?;
        Ok(Response::new(wire::ReplayWebhookResponse {
            webhook: self.webhook_out(&partner).filter(|_| reject_code == 0),
            reject_code,
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<wire::ListWebhooksRequest>,
    ) -> Result<Response<wire::ListWebhooksResponse>, Status> {
        self.gateway.operator(&request)?;
        let applied = self.gateway.state_machine.applied();
        let webhooks = applied.state.webhooks().map(|(partner, hook)| self.webhook_view(&applied.state, partner, hook));
        Ok(Response::new(wire::ListWebhooksResponse { webhooks: webhooks.collect() }))
    }
}

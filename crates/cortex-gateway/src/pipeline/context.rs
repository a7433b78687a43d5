//! What a request carries from stage to stage for its one usage record (`UsageContext`), and
//! how every answer of the pipeline starts (`answer_with_room`).

use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use cortex_limits::Reservation;
use cortex_store::usage::UsageRecord;
use cortex_upstream::ModelRoute;
use cortex_wire::Endpoint;
use cortex_wire::TokenUsage;

use crate::authenticate::ApiPrincipal;
use crate::budget;
use crate::metrics as m;
use crate::quota;
use crate::DataPlane;

/// Everything a usage record needs, gathered as the request goes.
pub struct UsageContext {
    pub plane: DataPlane,
    pub principal: ApiPrincipal,
    pub request_id: String,
    pub endpoint: Endpoint,
    pub model: String,
    pub provider: String,
    pub client_ip: String,
    pub started: Instant,
    pub started_millis: i64,
    /// Upstream attempts made (retries and failovers included), for the usage record.
    pub attempts: u32,
    /// The request's worst-case cost, reserved at its budget levels until it is settled.
    pub reservation: Option<Reservation>,
    /// The answering provider's series (its time to first token), once it answered.
    pub meter: Option<m::ProviderMeter>,
    /// A stream's time from the request's arrival to the first byte sent to the client.
    pub ttft: Option<std::time::Duration>,
    /// The answer is a stream, which counts the request when it ends (`stream.rs`).
    pub counted_by_stream: bool,
    /// The answer came from the response cache: its usage is recorded at no cost.
    pub cached: bool,
    /// The request's spans, when it is traced.
    pub trace: Option<crate::telemetry::RequestTrace>,
}

impl UsageContext {
    /// Whether a usage record is still owed for this request.
    pub(super) fn pending(&self) -> bool {
        !self.model.is_empty()
    }

    /// Queues the usage record, settles the budget reservation and charges the key's tokens. The strings move
    /// into the record (no copies), which also marks the context finished: a request is
    /// recorded once.
    pub fn finish(&mut self, route: Option<&ModelRoute>, status: u16, usage: Option<TokenUsage>) {
        if !self.pending() {
            return;
        }
        let usage = usage.unwrap_or_default();
        // A cached answer cost the provider nothing this time.
        let cost_usd = match route {
            Some(route) if !self.cached => {
                route.cost_usd(usage.prompt_tokens, usage.completion_tokens)
            }
            _ => 0.0,
        };
        let elapsed = self.started.elapsed();
        let hot = m::hot();
        hot.request_duration(self.endpoint)
            .record(elapsed.as_secs_f64());
        if usage.prompt_tokens > 0 {
            hot.prompt_tokens.increment(usage.prompt_tokens);
        }
        if usage.completion_tokens > 0 {
            hot.completion_tokens.increment(usage.completion_tokens);
        }
        if let Some(trace) = &self.trace {
            trace.usage(
                usage.prompt_tokens,
                usage.completion_tokens,
                self.attempts,
                self.ttft,
            );
        }
        // The settlement starts before the usage record is queued (the writer batches it
        // later): a budget counter rebuilt from the records in between would otherwise count
        // this request twice.
        if let Some(reservation) = self.reservation.take() {
            quota::settle_budget(&self.plane, reservation, budget::micro_usd(cost_usd));
        }
        self.plane.usage.record(UsageRecord {
            request_id: std::mem::take(&mut self.request_id),
            key_id: self.principal.key.id.clone(),
            user_id: self.principal.key.owner_user_id.clone(),
            model: std::mem::take(&mut self.model),
            provider: std::mem::take(&mut self.provider),
            endpoint: self.endpoint.name().to_owned(),
            prompt_tokens: i64::try_from(usage.prompt_tokens).unwrap_or(i64::MAX),
            completion_tokens: i64::try_from(usage.completion_tokens).unwrap_or(i64::MAX),
            cost_usd,
            latency_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            status: i64::from(status),
            client_ip: std::mem::take(&mut self.client_ip),
            created_at: self.started_millis,
            attempts: i64::from(self.attempts),
            org_id: self.principal.key.org_id.clone(),
            team_id: self.principal.key.team_id.clone(),
            ttft_ms: self
                .ttft
                .map(|ttft| i64::try_from(ttft.as_millis()).unwrap_or(i64::MAX)),
            cached: self.cached,
        });
        quota::charge(
            &self.plane,
            &self.principal.key,
            usage.prompt_tokens + usage.completion_tokens,
        );
    }
}

/// A response whose header map already has room for every header the layers around the proxy
/// add (request id, `RateLimit-*`, CORS's `Vary`, the security headers): about fifteen, which
/// an empty map reaches by growing and re-hashing three times.
pub(super) fn answer_with_room(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().reserve(16);
    response
}

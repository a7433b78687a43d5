//! Stage 5, guardrails (SPEC §21): the request's text is scanned before anything is spent
//! on it, and the answer's on its way back (`meter.rs` for whole answers, `guard_stream.rs`
//! for streams).
//!
//! The scan runs over the body as sent — every JSON string in it, decoded — with the
//! detectors of the request's policy (`cortex-guard`): a `block` rule refuses the request
//! with 400 `guardrail_blocked` naming the detector, a `redact` rule rewrites the matched
//! strings to `[REDACTED:<type>]` before the body goes further (the cache key and the
//! provider see the redacted body), a `log` rule lets it through. Webhook detectors then ask
//! their service about the (redacted) body, within their timeout. Every hit is an audit event
//! with detector, action, type and count (`guard_events.rs`), never the matched text.

use std::sync::Arc;

use axum::body::Bytes;
use cortex_domain::policy::GuardAction;
use cortex_guard::{Guard, Hit, WebhookRule};

use crate::error::ApiError;
use crate::guard_events::GuardEvent;
use crate::webhook::{self, Flagged};

use super::context::UsageContext;

/// The request's guardrails: `Some(body)` when redaction rewrote it, `None` when it goes on as
/// it came, or the refusal.
pub(super) async fn request(
    context: &UsageContext,
    policy_id: &str,
    guard: &Arc<Guard>,
    body: &Bytes,
) -> Result<Option<Bytes>, ApiError> {
    let mut redacted = None;
    if guard.scans_text() {
        let verdict = guard.apply_json(body);
        report(context, policy_id, "request", verdict.hits);
        if let Some(detector) = verdict.blocked {
            return Err(ApiError::GuardrailBlocked(detector));
        }
        redacted = verdict.redacted.map(Bytes::from);
    }
    for rule in guard.webhooks() {
        ask_webhook(context, policy_id, rule, redacted.as_ref().unwrap_or(body)).await?;
    }
    Ok(redacted)
}

/// One webhook detector: flagged under `block` refuses the request; no answer in time refuses
/// it too unless the rule fails open.
async fn ask_webhook(
    context: &UsageContext,
    policy_id: &str,
    rule: &WebhookRule,
    body: &Bytes,
) -> Result<(), ApiError> {
    let answer = webhook::ask(&context.plane.webhooks, rule, &context.model, body).await;
    let (label, refuse) = match answer {
        Flagged::No => return Ok(()),
        Flagged::Yes => ("flagged", rule.action == GuardAction::Block),
        Flagged::Unanswered => {
            tracing::warn!(
                fail_open = rule.fail_open,
                "a guardrail webhook did not answer in time or answered badly"
            );
            ("unanswered", !rule.fail_open)
        }
    };
    let action = if refuse {
        GuardAction::Block
    } else {
        GuardAction::Log
    };
    report(
        context,
        policy_id,
        "request",
        vec![Hit {
            detector: "webhook",
            action,
            label: label.to_owned(),
            count: 1,
        }],
    );
    if refuse {
        return Err(ApiError::GuardrailBlocked("webhook"));
    }
    Ok(())
}

/// Audit events for `hits`, one per (detector, action, type), through the event queue.
pub(super) fn report(
    context: &UsageContext,
    policy_id: &str,
    direction: &'static str,
    hits: Vec<Hit>,
) {
    for hit in hits {
        let key = &context.principal.key;
        context.plane.guard_events.record(GuardEvent {
            org_id: key.org_id.clone(),
            key_id: key.id.clone(),
            user_id: key.owner_user_id.clone(),
            model: context.model.clone(),
            request_id: context.request_id.clone(),
            policy_id: policy_id.to_owned(),
            direction,
            detector: hit.detector,
            action: hit.action,
            label: hit.label,
            count: hit.count,
        });
    }
}

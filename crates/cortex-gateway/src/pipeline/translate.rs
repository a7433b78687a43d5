//! Stage 6, translate: the request in the dialect of the model's provider, and (on the way
//! back, in stage 8) the answer in the dialect of the client's door. The translators are pure
//! functions in `cortex-wire`; this stage only picks them.
//!
//! A door and a provider of the same dialect pass the body through (only `model` and, on
//! OpenAI-style streams, `stream_options` change). Otherwise chat completions is the pivot:
//! Responses and Messages doors reach OpenAI-style providers as chat, and chat and Responses
//! doors reach Anthropic providers as Messages.

use axum::body::Bytes;
use cortex_upstream::ModelRoute;
use cortex_wire::translate::{anthropic, responses, AnswerError, Chain, StreamTranslator};
use cortex_wire::{BodyError, Dialect, Endpoint, ProxyRequest};

use crate::error::ApiError;

/// How a request's body and answer cross from its door to its provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    /// Same dialect on both sides.
    Pass,
    /// Chat door, Anthropic provider.
    ChatToMessages,
    /// Messages door, OpenAI-style provider.
    MessagesToChat,
    /// Responses door, OpenAI-style provider without its own `/responses`.
    ResponsesToChat,
    /// Responses door, Anthropic provider: through chat both ways.
    ResponsesToMessages,
}

impl Plan {
    /// The plan for `endpoint` on `route`, or the refusal when its provider cannot serve it
    /// at all (completions and embeddings exist only on OpenAI-style servers).
    pub(super) fn new(endpoint: Endpoint, route: &ModelRoute) -> Result<Plan, ApiError> {
        let door = endpoint.dialect();
        if route.speaks(door) {
            return Ok(Plan::Pass);
        }
        let to_chat = route.speaks(Dialect::Chat);
        let to_messages = route.speaks(Dialect::Messages);
        match endpoint {
            Endpoint::Chat if to_messages => Ok(Plan::ChatToMessages),
            Endpoint::Messages if to_chat => Ok(Plan::MessagesToChat),
            Endpoint::Responses if to_chat => Ok(Plan::ResponsesToChat),
            Endpoint::Responses if to_messages => Ok(Plan::ResponsesToMessages),
            _ => Err(ApiError::invalid(format!(
                "{} is not available for this model: its provider has no such endpoint",
                endpoint.path()
            ))),
        }
    }

    /// The endpoint the provider is called at.
    pub(super) fn upstream_endpoint(self, door: Endpoint) -> Endpoint {
        match self {
            Plan::Pass => door,
            Plan::MessagesToChat | Plan::ResponsesToChat => Endpoint::Chat,
            Plan::ChatToMessages | Plan::ResponsesToMessages => Endpoint::Messages,
        }
    }

    /// The body to send: the client's, in the provider's dialect, naming the provider's model.
    pub(super) fn request(
        self,
        request: &ProxyRequest<'_>,
        bytes: &Bytes,
        upstream_model: &str,
    ) -> Result<Vec<u8>, BodyError> {
        match self {
            Plan::Pass => request.upstream_body(upstream_model),
            Plan::ChatToMessages => anthropic::chat_request_to_messages(bytes, upstream_model),
            Plan::MessagesToChat => anthropic::messages_request_to_chat(bytes, upstream_model),
            Plan::ResponsesToChat => responses::responses_request_to_chat(bytes, upstream_model),
            Plan::ResponsesToMessages => {
                let chat = responses::responses_request_to_chat(bytes, upstream_model)?;
                anthropic::chat_request_to_messages(&chat, upstream_model)
            }
        }
    }

    /// A whole (successful) answer in the door's dialect. `created` is now, in Unix seconds.
    pub(super) fn answer(self, body: Bytes, created: i64) -> Result<Bytes, AnswerError> {
        let translated = match self {
            Plan::Pass => return Ok(body),
            Plan::ChatToMessages => anthropic::messages_answer_to_chat(&body, created)?,
            Plan::MessagesToChat => anthropic::chat_answer_to_messages(&body, created)?,
            Plan::ResponsesToChat => responses::chat_answer_to_responses(&body, created)?,
            Plan::ResponsesToMessages => {
                let chat = anthropic::messages_answer_to_chat(&body, created)?;
                responses::chat_answer_to_responses(&chat, created)?
            }
        };
        Ok(Bytes::from(translated))
    }

    /// The stream translator, when the stream needs one.
    pub(super) fn stream(self, created: i64) -> Option<Box<dyn StreamTranslator>> {
        match self {
            Plan::Pass => None,
            Plan::ChatToMessages => Some(Box::new(anthropic::MessagesStreamToChat::new(created))),
            Plan::MessagesToChat => Some(Box::new(anthropic::ChatStreamToMessages::new(created))),
            Plan::ResponsesToChat => Some(Box::new(responses::ChatStreamToResponses::new(created))),
            Plan::ResponsesToMessages => Some(Box::new(Chain::new(
                anthropic::MessagesStreamToChat::new(created),
                responses::ChatStreamToResponses::new(created),
            ))),
        }
    }
}

//! Chat completions ↔ Anthropic Messages. (Being written: the signatures are the contract the
//! pipeline uses.)

use crate::body::BodyError;
use crate::sse::TokenUsage;

use super::{AnswerError, StreamTranslator};

/// A chat-completions request (chat door) to a Messages request (Anthropic provider).
pub fn chat_request_to_messages(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let _ = (body, upstream_model);
    Err(BodyError::unsupported("model"))
}

/// A Messages request (`/v1/messages` door) to a chat-completions request (OpenAI-style
/// provider); a stream asks for `stream_options.include_usage`.
pub fn messages_request_to_chat(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let _ = (body, upstream_model);
    Err(BodyError::unsupported("model"))
}

/// An Anthropic `message` answer to a `chat.completion`.
pub fn messages_answer_to_chat(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let _ = (body, created);
    Err(AnswerError("not written yet"))
}

/// A `chat.completion` answer to an Anthropic `message`.
pub fn chat_answer_to_messages(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let _ = (body, created);
    Err(AnswerError("not written yet"))
}

/// Anthropic's stream (`message_start` … `message_stop`) to chat-completion chunks, the
/// usage chunk and `data: [DONE]`.
#[derive(Default)]
pub struct MessagesStreamToChat {}

impl MessagesStreamToChat {
    pub fn new(created: i64) -> Self {
        let _ = created;
        Self {}
    }
}

impl StreamTranslator for MessagesStreamToChat {
    fn feed(&mut self, _chunk: &[u8], _out: &mut Vec<u8>) {}
    fn finish(&mut self, _out: &mut Vec<u8>) {}
    fn usage(&self) -> Option<TokenUsage> {
        None
    }
}

/// Chat-completion chunks to Anthropic's stream, `message_start` … `message_stop`.
#[derive(Default)]
pub struct ChatStreamToMessages {}

impl ChatStreamToMessages {
    pub fn new(created: i64) -> Self {
        let _ = created;
        Self {}
    }
}

impl StreamTranslator for ChatStreamToMessages {
    fn feed(&mut self, _chunk: &[u8], _out: &mut Vec<u8>) {}
    fn finish(&mut self, _out: &mut Vec<u8>) {}
    fn usage(&self) -> Option<TokenUsage> {
        None
    }
}

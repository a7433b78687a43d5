//! Responses API → chat completions, and chat answers back. (Being written: the signatures
//! are the contract the pipeline uses.)

use crate::body::BodyError;
use crate::sse::TokenUsage;

use super::{AnswerError, StreamTranslator};

/// A Responses request (`/v1/responses` door) to a chat-completions request; a stream asks
/// for `stream_options.include_usage`.
pub fn responses_request_to_chat(body: &[u8], upstream_model: &str) -> Result<Vec<u8>, BodyError> {
    let _ = (body, upstream_model);
    Err(BodyError::unsupported("model"))
}

/// A `chat.completion` answer to a Responses `response` object.
pub fn chat_answer_to_responses(body: &[u8], created: i64) -> Result<Vec<u8>, AnswerError> {
    let _ = (body, created);
    Err(AnswerError("not written yet"))
}

/// Chat-completion chunks to the Responses stream, `response.created` …
/// `response.completed`.
#[derive(Default)]
pub struct ChatStreamToResponses {}

impl ChatStreamToResponses {
    pub fn new(created: i64) -> Self {
        let _ = created;
        Self {}
    }
}

impl StreamTranslator for ChatStreamToResponses {
    fn feed(&mut self, _chunk: &[u8], _out: &mut Vec<u8>) {}
    fn finish(&mut self, _out: &mut Vec<u8>) {}
    fn usage(&self) -> Option<TokenUsage> {
        None
    }
}

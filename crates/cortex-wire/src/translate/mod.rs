//! Translation between the conversation dialects (SPEC §15): OpenAI chat completions, the
//! Responses API and Anthropic's Messages API, both ways, for requests, whole answers and
//! streams event by event.
//!
//! Chat completions is the pivot: every translator goes to or from it, and a door and a
//! provider that are both something else go through it twice (a Responses request to an
//! Anthropic provider is Responses → chat → Messages, and its answer Messages → chat →
//! Responses; [`Chain`] joins two stream translators).
//!
//! | client door | provider | request | answer / stream |
//! |---|---|---|---|
//! | chat | Messages | [`anthropic::chat_request_to_messages`] | [`anthropic::messages_answer_to_chat`], [`anthropic::MessagesStreamToChat`] |
//! | Messages | chat | [`anthropic::messages_request_to_chat`] | [`anthropic::chat_answer_to_messages`], [`anthropic::ChatStreamToMessages`] |
//! | Responses | chat | [`responses::responses_request_to_chat`] | [`responses::chat_answer_to_responses`], [`responses::ChatStreamToResponses`] |
//!
//! Rules every translator keeps:
//! - a field with an effect that the target dialect cannot carry is refused with
//!   [`BodyError::Unsupported`] naming it, never dropped; fields without an effect on the
//!   answer (`metadata`, `user`, `store: false`…) may be left out;
//! - the output is always valid JSON (each SSE event's data is one JSON value), whatever the
//!   input: a malformed upstream answer is an [`AnswerError`], never a panic or a broken event;
//! - usage is read from the upstream's own dialect, so limits and cost hold on every door.

pub mod anthropic;
pub mod responses;

use crate::body::BodyError;
use crate::sse::{SseEvent, SseReader, TokenUsage};

/// An upstream answer that could not be translated: not JSON, or not the dialect's shape.
/// The client gets a 502; the cause goes to the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerError(pub &'static str);

impl std::fmt::Display for AnswerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for AnswerError {}

/// A request body translator: the client's body (already checked by
/// [`crate::body::parse`]) and the provider's name for the model, to the provider's body.
pub type RequestTranslator = fn(&[u8], &str) -> Result<Vec<u8>, BodyError>;

/// A whole-answer translator: the provider's JSON answer to the client's. The second argument
/// is the time (Unix seconds) to put in `created`/`created_at` where the provider's dialect
/// gives none (the crate is pure: the caller reads the clock).
pub type AnswerTranslator = fn(&[u8], i64) -> Result<Vec<u8>, AnswerError>;

/// Rewrites a stream event by event as its bytes arrive, in any split. Each translator has a
/// `new(created: i64)` taking the time for `created`/`created_at`, as [`AnswerTranslator`].
pub trait StreamTranslator: Send {
    /// Feeds upstream bytes; appends what the client should get now to `out` (possibly
    /// nothing, when the bytes completed no event).
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>);

    /// The upstream stream ended (normally or not); appends the closing events the client's
    /// dialect needs. A stream that ended without its own end is closed with an error event
    /// in the client's dialect rather than a clean end.
    fn finish(&mut self, out: &mut Vec<u8>);

    /// The usage the upstream reported so far, in its own fields.
    fn usage(&self) -> Option<TokenUsage>;
}

/// A stream translator's state, fed whole events by [`ByEvent`], which owns the byte-level
/// splitting and the end-of-stream rules every translator shares.
pub trait EventState: Send {
    /// One upstream event; what the client gets for it is appended to `out`.
    fn on_event(&mut self, event: SseEvent<'_>, out: &mut Vec<u8>);
    /// Whether the client's stream has been ended (cleanly or with an error).
    fn ended(&self) -> bool;
    /// Ends the client's stream with an error event in its dialect; nothing is written after.
    fn fail(&mut self, message: &str, out: &mut Vec<u8>);
    /// Why a stream that stopped before its end was incomplete.
    fn cut_short(&self) -> &'static str {
        "the upstream stream ended before it was complete"
    }
    /// The upstream's usage so far.
    fn usage(&self) -> Option<TokenUsage>;
}

/// A [`StreamTranslator`] from an [`EventState`]: bytes are split into events in any split,
/// an event lost to the size limit fails the stream (the client never takes a cut answer for
/// a whole one), and a stream that stops before its own end is closed with an error event.
pub struct ByEvent<S> {
    reader: SseReader,
    state: S,
}

impl<S: EventState> ByEvent<S> {
    pub fn with_state(state: S) -> Self {
        Self {
            reader: SseReader::new(),
            state,
        }
    }
}

impl<S: EventState> StreamTranslator for ByEvent<S> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let dropped = self.reader.dropped();
        let state = &mut self.state;
        self.reader.feed(chunk, |event| state.on_event(event, out));
        if self.reader.dropped() > dropped && !self.state.ended() {
            self.state
                .fail("an upstream stream event passed the size limit", out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        let state = &mut self.state;
        self.reader.finish(|event| state.on_event(event, out));
        if !self.state.ended() {
            let message = self.state.cut_short();
            self.state.fail(message, out);
        }
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.state.usage()
    }
}

/// Two translators in a row: `first`'s output is `second`'s input. Usage is the first's, which
/// reads the provider's own stream.
pub struct Chain<A, B> {
    first: A,
    second: B,
    between: Vec<u8>,
}

impl<A: StreamTranslator, B: StreamTranslator> Chain<A, B> {
    pub fn new(first: A, second: B) -> Self {
        Self {
            first,
            second,
            between: Vec::new(),
        }
    }
}

impl<A: StreamTranslator, B: StreamTranslator> StreamTranslator for Chain<A, B> {
    fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        self.between.clear();
        self.first.feed(chunk, &mut self.between);
        if !self.between.is_empty() {
            self.second.feed(&self.between, out);
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        self.between.clear();
        self.first.finish(&mut self.between);
        if !self.between.is_empty() {
            self.second.feed(&self.between, out);
        }
        self.second.finish(out);
    }

    fn usage(&self) -> Option<TokenUsage> {
        self.first.usage()
    }
}

/// Appends one SSE event (`event:` line when `name` is not empty, one `data:` line, blank
/// line) to `out`. `data` must be one line of JSON, as `serde_json` writes it.
pub fn write_event(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    write_typed_event(out, name, data);
}

/// [`write_event`] for any serializable data, written straight to JSON without a `Value`
/// tree in between.
pub fn write_typed_event<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, name: &str, data: &T) {
    if !name.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    // Writing to a `Vec` cannot fail for data whose map keys are strings (every caller's).
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

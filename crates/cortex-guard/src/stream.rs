//! The guard over a streamed answer: text arrives in small pieces (an SSE delta each), and a
//! match split across pieces must still be found and redacted.
//!
//! The stream keeps the text it has not decided yet and runs the same resolution as a whole
//! text ([`Guard::step`]) over it, with "the end is not the end": a candidate whose matcher
//! read past the buffer is undecided, and nothing from its start on goes out. So the
//! concatenation of everything written equals `apply(whole).redacted.unwrap_or(whole)`
//! (tests/stream.rs checks it over random splits).
//!
//! How much is held back: normally at most [`MAX_HOLD`] bytes (the last [`HOLD`] bytes, where
//! a literal prefix or an email's local part may have started, plus the piece that arrived
//! since the last step). An open candidate holds from its start until it is decided, and every
//! matcher reads a bounded window: a provider token at most 512 bytes, a JWT 3 × 4 KiB, a
//! private key block 16 KiB from its BEGIN line (so a key block longer than the usual hold is
//! still caught whole: once `-----BEGIN … PRIVATE KEY-----` is seen, text is held until the
//! END line or the 16 KiB cap, then redacted). A stream with custom patterns holds 256 bytes.

use std::sync::Arc;

use cortex_domain::policy::GuardAction;

use crate::scan::{count_hit, floor_char, push_marker, Guard, Hit, Resolve, HOLD};

/// The text held back while no candidate is open, at most (see the module doc).
pub const MAX_HOLD: usize = 512;
/// Text kept before the undecided part: detectors look back at most this far (an email's
/// local part, word boundaries).
const CONTEXT: usize = HOLD + 8;
/// A step runs when this much text arrived since the last one (or the held text doubled).
const STEP_EVERY: usize = 64;

pub struct StreamGuard {
    guard: Arc<Guard>,
    /// Text from some point on: `CONTEXT` bytes of already written text, then the undecided.
    buf: String,
    /// Everything before is decided (findings taken).
    decided: usize,
    /// Everything before was written out.
    written: usize,
    res: Resolve,
    next_step: usize,
    hits: Vec<Hit>,
    blocked: Option<&'static str>,
}

impl std::fmt::Debug for StreamGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamGuard")
            .field("held_bytes", &(self.buf.len() - self.written))
            .field("hits", &self.hits)
            .field("blocked", &self.blocked)
            .finish()
    }
}

impl Guard {
    /// A scanner for one streamed text.
    pub fn stream(self: &Arc<Self>) -> StreamGuard {
        StreamGuard {
            guard: Arc::clone(self),
            buf: String::new(),
            decided: 0,
            written: 0,
            res: Resolve::default(),
            next_step: STEP_EVERY,
            hits: Vec::new(),
            blocked: None,
        }
    }
}

impl StreamGuard {
    /// Appends to `out` the text that can no longer be part of a match (redacted). Returns the
    /// detector when a block rule hit; the caller ends the stream (the blocked text itself was
    /// never written), and later pushes write nothing.
    pub fn push(&mut self, piece: &str, out: &mut String) -> Option<&'static str> {
        if self.blocked.is_some() {
            return self.blocked;
        }
        self.buf.push_str(piece);
        if self.buf.len() >= self.next_step {
            self.step(false, out);
        }
        self.blocked
    }

    /// End of the stream: everything held back, redacted, into `out`.
    pub fn finish(&mut self, out: &mut String) -> Option<&'static str> {
        if self.blocked.is_none() {
            self.step(true, out);
        }
        self.blocked
    }

    /// The hits counted so far (taken: the next call starts from zero).
    pub fn take_hits(&mut self) -> Vec<Hit> {
        std::mem::take(&mut self.hits)
    }

    /// Bytes received but not written yet.
    pub fn held(&self) -> usize {
        self.buf.len() - self.written
    }

    fn step(&mut self, eof: bool, out: &mut String) {
        let guard = Arc::clone(&self.guard);
        let mut cands = Vec::new();
        let mut found = Vec::new();
        let limit = guard.step(
            &self.buf,
            self.decided,
            eof,
            &mut self.res,
            &mut cands,
            &mut found,
        );
        for f in &found {
            count_hit(&mut self.hits, f);
            if f.action == GuardAction::Block {
                self.blocked.get_or_insert(f.detector);
            }
        }
        if self.blocked.is_some() {
            return;
        }
        for f in found.iter().filter(|f| f.action == GuardAction::Redact) {
            if f.start < self.written {
                continue;
            }
            out.push_str(&self.buf[self.written..f.start]);
            push_marker(out, f.label);
            self.written = f.end;
        }
        // A log finding's text goes out as it is, but only up to `limit`: a stronger finding
        // starting after `limit` may still replace it.
        if self.written < limit {
            out.push_str(&self.buf[self.written..limit]);
            self.written = limit;
        }
        self.decided = limit;
        // Forget what no detector looks back to.
        let cut = floor_char(
            &self.buf,
            self.decided.min(self.written).saturating_sub(CONTEXT),
        );
        if cut > 0 {
            self.buf.drain(..cut);
            self.decided -= cut;
            self.written -= cut;
            self.res.last_end = self.res.last_end.saturating_sub(cut);
        }
        let undecided = self.buf.len() - self.decided;
        self.next_step = self.buf.len() + STEP_EVERY.max(undecided / 2);
    }
}

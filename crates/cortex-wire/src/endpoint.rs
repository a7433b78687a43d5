//! The proxied endpoints of the front doors: their paths, the scope each needs, the dialect
//! each speaks, and the path below a provider's base URL. `Endpoint::ALL` is the one list the
//! data plane serves and the metrics labels are built from; a new endpoint is one variant here.

use cortex_domain::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    /// OpenAI's Responses API (`POST /v1/responses`).
    Responses,
    /// Anthropic's Messages API (`POST /v1/messages`).
    Messages,
}

/// The request and answer formats Cortex speaks, on a front door or towards a provider. A
/// request whose door and provider differ in dialect is translated both ways
/// ([`crate::translate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// OpenAI chat completions (and, for the endpoints only OpenAI-style servers have,
    /// completions and embeddings).
    Chat,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
}

impl Dialect {
    /// The endpoint a provider of this dialect is called at for a conversation.
    pub fn endpoint(self) -> Endpoint {
        match self {
            Dialect::Chat => Endpoint::Chat,
            Dialect::Responses => Endpoint::Responses,
            Dialect::Messages => Endpoint::Messages,
        }
    }
}

impl Endpoint {
    /// Every proxied endpoint, in declaration order (so `ALL[e.index()] == e`).
    pub const ALL: [Endpoint; 5] = [
        Endpoint::Chat,
        Endpoint::Completions,
        Endpoint::Embeddings,
        Endpoint::Responses,
        Endpoint::Messages,
    ];

    /// Responses and Messages are conversations like chat completions, under the same scope.
    pub fn scope(self) -> Scope {
        match self {
            Endpoint::Chat | Endpoint::Responses | Endpoint::Messages => Scope::Chat,
            Endpoint::Completions => Scope::Completions,
            Endpoint::Embeddings => Scope::Embeddings,
        }
    }

    /// The gateway's path for it.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/v1/chat/completions",
            Endpoint::Completions => "/v1/completions",
            Endpoint::Embeddings => "/v1/embeddings",
            Endpoint::Responses => "/v1/responses",
            Endpoint::Messages => "/v1/messages",
        }
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// The path below the provider's base URL: the gateway's path without `/v1/`.
    pub fn upstream_path(self) -> &'static str {
        let path = self.path();
        path.strip_prefix("/v1/").unwrap_or(path)
    }

    /// Position in [`Endpoint::ALL`] (and so in the metrics' per-endpoint handles).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The dialect the endpoint's bodies are written in.
    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::Chat | Endpoint::Completions | Endpoint::Embeddings => Dialect::Chat,
            Endpoint::Responses => Dialect::Responses,
            Endpoint::Messages => Dialect::Messages,
        }
    }

    /// Whether the endpoint is a conversation that can be translated between dialects
    /// (completions and embeddings exist only on OpenAI-style servers).
    pub fn is_conversation(self) -> bool {
        matches!(
            self,
            Endpoint::Chat | Endpoint::Responses | Endpoint::Messages
        )
    }
}

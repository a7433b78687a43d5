//! The proxied endpoints of the OpenAI front door: their paths, the scope each needs, and the
//! path below a provider's base URL. `Endpoint::ALL` is the one list the data plane serves,
//! the metrics label and the router's 405s are built from; a new endpoint is one variant here.

use cortex_domain::Scope;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Every proxied endpoint, in declaration order (so `ALL[e.index()] == e`).
    pub const ALL: [Endpoint; 3] = [Endpoint::Chat, Endpoint::Completions, Endpoint::Embeddings];

    pub fn scope(self) -> Scope {
        match self {
            Endpoint::Chat => Scope::Chat,
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
        }
    }
}

//! The proxied `/v1` POSTs, served without axum's router.
//!
//! `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` are nearly all of a
//! gateway's traffic. Through the router each one also paid for path matching, two `from_fn`
//! middlewares (each clones and boxes the rest of the stack per request), extractor plumbing
//! and route futures: about a tenth of the instructions per request in the profile
//! (docs/benchmarks.md). This service sits innermost in the edge stack of `app.rs`, so security
//! headers, panic catching, the request id, the access log, CORS, the client IP, CSRF and JSON
//! errors still wrap these requests exactly as they wrap every other; it only replaces what the
//! router would have done, with the same functions in the same order:
//!
//! 1. the key check ([`api_key::authenticate_request`], IP-limited on failure),
//! 2. the key's rate limit ([`rate_limit::check`]),
//! 3. the body, refused with 413 past `CORTEX_MAX_BODY_BYTES` before it is all buffered,
//! 4. [`proxy::handle`], with the `RateLimit-*` headers added to whatever it answers.
//!
//! Everything else — other methods on these paths (405), `/v1/models`, the admin API — goes to
//! the router, whose routes for these paths call the same [`serve`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Method, Request};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::middleware::client_ip::ClientIp;
use crate::middleware::request_id::RequestId;
use crate::middleware::{api_key, rate_limit};
use crate::state::AppState;

use super::proxy::{self, Endpoint};

/// Which proxied endpoint a request is for, if it is one.
fn endpoint_of(request: &Request<Body>) -> Option<Endpoint> {
    if request.method() != Method::POST {
        return None;
    }
    Endpoint::from_path(request.uri().path())
}

#[derive(Clone)]
pub struct FastLayer {
    app: AppState,
}

impl FastLayer {
    pub fn new(app: AppState) -> Self {
        Self { app }
    }
}

impl<S> Layer<S> for FastLayer {
    type Service = Fast<S>;

    fn layer(&self, router: S) -> Self::Service {
        Fast {
            app: self.app.clone(),
            router,
        }
    }
}

#[derive(Clone)]
pub struct Fast<S> {
    app: AppState,
    router: S,
}

type Served = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request<Body>> for Fast<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Served, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.router.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        match endpoint_of(&request) {
            Some(endpoint) => {
                let app = self.app.clone();
                Either::Left(Box::pin(
                    async move { Ok(serve(app, endpoint, request).await) },
                ))
            }
            None => Either::Right(self.router.call(request)),
        }
    }
}

/// Answers one proxied request: key, rate limit, body, then the proxy.
pub(super) async fn serve(app: AppState, endpoint: Endpoint, request: Request<Body>) -> Response {
    let (parts, body) = request.into_parts();
    let principal =
        match api_key::authenticate_request(&app, &parts.headers, &parts.extensions).await {
            Ok(principal) => principal,
            Err(refusal) => return refusal,
        };
    let rate_headers = match rate_limit::check(&app, &principal).await {
        Ok(headers) => headers,
        Err(refusal) => return refusal,
    };
    // Both are put there by the edge layers around this service; without them the stack is
    // miswired, and the request is refused rather than served without an id or an address.
    let (Some(ip), Some(request_id)) = (
        parts.extensions.get::<ClientIp>().copied(),
        parts.extensions.get::<RequestId>().cloned(),
    ) else {
        return ApiError::Internal.into_response();
    };
    let mut response = match read_body(body, app.config.max_body_bytes).await {
        Ok(bytes) => proxy::handle(app, principal, ip, request_id, endpoint, bytes).await,
        Err(error) => {
            // The rest of the body is not read, so the connection cannot carry another request:
            // say so, or a client may send its next request on it and see it closed.
            let mut response = error.into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    };
    if let Some(headers) = rate_headers {
        response.headers_mut().extend(headers);
    }
    response
}

/// The whole body, or 413 as soon as it passes `limit` (a `Content-Length` above it is refused
/// before anything is read).
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge)
        }
        Err(error) if crate::body_deadline::is_body_timeout(error.as_ref()) => {
            Err(ApiError::RequestTimeout)
        }
        Err(_) => Err(ApiError::invalid("the request body could not be read")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_posts_to_the_proxied_paths_take_the_fast_path() {
        let request = |method: Method, path: &str| {
            Request::builder()
                .method(method)
                .uri(path)
                .body(Body::empty())
                .unwrap()
        };
        assert_eq!(
            endpoint_of(&request(Method::POST, "/v1/chat/completions")),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            endpoint_of(&request(Method::POST, "/v1/completions?x=1")),
            Some(Endpoint::Completions)
        );
        assert_eq!(
            endpoint_of(&request(Method::POST, "/v1/embeddings")),
            Some(Endpoint::Embeddings)
        );
        for (method, path) in [
            (Method::GET, "/v1/chat/completions"),
            (Method::PUT, "/v1/embeddings"),
            (Method::POST, "/v1/chat/completions/"),
            (Method::POST, "/v1/models"),
            (Method::POST, "/V1/chat/completions"),
            (Method::POST, "/admin/keys"),
        ] {
            assert_eq!(
                endpoint_of(&request(method.clone(), path)),
                None,
                "{method} {path}"
            );
        }
    }

    #[tokio::test]
    async fn bodies_past_the_limit_are_refused_with_413() {
        let small = read_body(Body::from("12345"), 5).await;
        assert_eq!(small.ok().as_deref(), Some(&b"12345"[..]));
        let large = read_body(Body::from("123456"), 5).await;
        assert!(matches!(large, Err(ApiError::PayloadTooLarge)));
    }
}

//! A tower layer for middleware whose work before the handler is synchronous: look at or change
//! the request, maybe answer at once, and change the response on the way out.
//!
//! Why not `axum::middleware::from_fn`: an async middleware must own the rest of the stack to
//! call it after an await, so every `from_fn` layer clones everything inside it and boxes it, on
//! every request. Stacked, those clones were the largest share of the gateway's per-request
//! allocations (see docs/benchmarks.md). These layers call the inner service directly from
//! `call`: nothing is cloned or boxed, and the response is adjusted in a small future.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

/// One middleware concern, run around the inner service without an await of its own.
pub trait Inline<ResBody>: Clone + Send + Sync + 'static {
    /// What `before` hands to `after` for this request.
    type Carry: Send + 'static;

    /// Runs before the inner service. `Err` answers at once; the inner service is not called.
    fn before<B>(&self, request: &mut Request<B>) -> Result<Self::Carry, Response<ResBody>>;

    /// Runs on the inner service's response.
    fn after(carry: Self::Carry, response: Response<ResBody>) -> Response<ResBody>;
}

#[derive(Clone)]
pub struct InlineLayer<M> {
    middleware: M,
}

impl<M> InlineLayer<M> {
    pub fn new(middleware: M) -> Self {
        Self { middleware }
    }
}

impl<M: Clone, S> Layer<S> for InlineLayer<M> {
    type Service = InlineService<M, S>;

    fn layer(&self, inner: S) -> Self::Service {
        InlineService {
            middleware: self.middleware.clone(),
            inner,
        }
    }
}

#[derive(Clone)]
pub struct InlineService<M, S> {
    middleware: M,
    inner: S,
}

impl<M, S, ReqBody, ResBody> Service<Request<ReqBody>> for InlineService<M, S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    M: Inline<ResBody>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = InlineFuture<M, S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match self.middleware.before(&mut request) {
            Ok(carry) => InlineFuture::Inner {
                future: self.inner.call(request),
                carry: Some(carry),
            },
            Err(response) => InlineFuture::Answered {
                response: Some(response),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = InlineFutureProjection]
    pub enum InlineFuture<M: Inline<ResBody>, F, ResBody> {
        Inner { #[pin] future: F, carry: Option<M::Carry> },
        Answered { response: Option<Response<ResBody>> },
    }
}

impl<M, F, ResBody, E> Future for InlineFuture<M, F, ResBody>
where
    M: Inline<ResBody>,
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            InlineFutureProjection::Inner { future, carry } => {
                let response = ready!(future.poll(cx))?;
                match carry.take() {
                    Some(carry) => Poll::Ready(Ok(M::after(carry, response))),
                    // Polled again after completion: a caller bug; answer as the inner did.
                    None => Poll::Ready(Ok(response)),
                }
            }
            InlineFutureProjection::Answered { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Pending,
            },
        }
    }
}

//! The accept loop: plain TCP or TLS, HTTP/1.1 and HTTP/2, with a cap on open connections, a
//! deadline for the request head (slow clients cannot hold connections), and graceful shutdown
//! that lets in-flight requests and streams finish within the grace period.
//!
//! The protocol is chosen before hyper sees a byte: by ALPN over TLS, and over plain TCP by
//! peeking at the first bytes for HTTP/2's connection preface (h2c with prior knowledge). So
//! each connection is handed to hyper's HTTP/1 or HTTP/2 server directly. hyper-util's `auto`
//! server did this by reading the first 24 bytes itself and replaying them through a wrapper:
//! every read of the connection then went through that wrapper, and hyper's first read
//! returned only those 24 bytes, which grew its read buffer to 16 KiB for the connection's
//! whole life (half of the memory a held stream cost on the client side; docs/benchmarks.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::BoxError;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceExt};

use crate::body_deadline::DeadlineBody;
use crate::conn_guard::{close_when_idle, ActiveStreams, AddressPermit, PerAddress, TrackedBody};
use crate::tls::ReloadableTls;

pub struct LoopSettings {
    pub header_read_timeout: Duration,
    /// A request body must arrive within this long of the first read that waits for it.
    pub body_read_timeout: Duration,
    /// An HTTP/2 connection with no unfinished request for this long is closed.
    pub http2_idle_timeout: Duration,
    pub max_connections: usize,
    /// Open connections per client address (IPv6: per /64); `exempt` peers are not counted.
    pub max_connections_per_ip: usize,
    pub exempt_from_per_ip: Vec<ipnet::IpNet>,
    pub grace: Duration,
    pub tls: Option<Arc<ReloadableTls>>,
    /// Serving threads, each with its own single-threaded runtime.
    pub threads: usize,
}

/// What the serve loop serves: the edge stack of `app.rs` ([`crate::app::edge`]), its bounds
/// named once for the functions that pass it along.
pub trait EdgeService<B>:
    Service<Request<Body>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> EdgeService<B> for S where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// The body of the edge stack's answers, as hyper needs it.
pub trait EdgeBody: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

impl<B> EdgeBody for B where B: HttpBody<Data = Bytes, Error: Into<BoxError>> + Send + 'static {}

/// What every serving thread shares.
struct Shared<S> {
    edge: S,
    /// Open connections, across all threads.
    permits: Arc<Semaphore>,
    /// Open connections per client address, across all threads.
    per_address: Arc<PerAddress>,
    body_read_timeout: Duration,
    http2_idle_timeout: Duration,
    builders: Builders,
    tls: Option<Arc<ReloadableTls>>,
    header_read_timeout: Duration,
    grace: Duration,
}

/// The serving threads after serving ended. Their runtimes are kept until [`Served::release`]
/// (or drop): a connection a request opened on one of them — to a provider, to PostgreSQL or
/// Redis through a shared pool — is driven by that runtime, and the shutdown steps that follow
/// serving (draining usage, the last audit checkpoint) may still use it.
pub struct Served {
    _release: tokio_util::sync::DropGuard,
}

impl Served {
    /// Ends the serving threads' runtimes, and with them every connection still open on them.
    pub fn release(self) {
        drop(self._release);
    }
}

/// Serves on `settings.threads` threads until `stopping` fires, then waits up to the grace
/// period for open connections.
///
/// Thread per core: each thread accepts from the same listening socket (whichever is free
/// takes the next connection) and serves its connections to the end on its own runtime,
/// with its own upstream connection pool ([`cortex_upstream::use_pool`]). A request's tasks,
/// its upstream connection and its wake-ups stay on one thread; with one shared work-stealing
/// runtime they moved between threads, and the hand-overs cost about an eighth of the CPU time
/// per request (docs/benchmarks.md). Everything else (pollers, the usage writer, Redis
/// invalidation) stays on the main runtime.
pub async fn run<S, B>(
    listener: TcpListener,
    edge: S,
    settings: LoopSettings,
    stopping: CancellationToken,
) -> std::io::Result<Served>
where
    S: EdgeService<B>,
    B: EdgeBody,
{
    let release = CancellationToken::new();
    // Dropped on every early return below, so threads already started do not wait forever.
    let guard = release.clone().drop_guard();
    let shared = Arc::new(Shared {
        edge,
        permits: Arc::new(Semaphore::new(settings.max_connections)),
        per_address: PerAddress::new(settings.max_connections_per_ip, settings.exempt_from_per_ip),
        body_read_timeout: settings.body_read_timeout,
        http2_idle_timeout: settings.http2_idle_timeout,
        builders: Builders::new(settings.header_read_timeout),
        tls: settings.tls,
        header_read_timeout: settings.header_read_timeout,
        grace: settings.grace,
    });
    let listener = listener.into_std()?;
    let mut drained = Vec::with_capacity(settings.threads);
    for index in 0..settings.threads.max(1) {
        let listener = listener.try_clone()?;
        let (started, ready) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let shared = Arc::clone(&shared);
        let stopping = stopping.clone();
        let release = release.clone();
        std::thread::Builder::new()
            .name(format!("cortex-serve-{index}"))
            .spawn(move || {
                // Built on its own thread: a runtime may not be dropped inside another one,
                // which is where `run` is if something fails.
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        let _ = started.send(Err(err));
                        return;
                    }
                };
                // Pool 0 is for the threads that do not serve.
                cortex_upstream::use_pool(index + 1);
                let anchor = shared.header_read_timeout;
                runtime.block_on(async move {
                    tokio::spawn(anchor_timers(anchor));
                    match TcpListener::from_std(listener) {
                        Ok(listener) => {
                            let _ = started.send(Ok(()));
                            // Released early only when `run` itself was dropped or failed.
                            tokio::select! {
                                () = serve_thread(listener, &shared, &stopping) => {}
                                () = release.cancelled() => {}
                            }
                        }
                        Err(err) => {
                            let _ = started.send(Err(err));
                            return;
                        }
                    }
                    let _ = done.send(());
                    release.cancelled().await;
                });
                runtime.shutdown_background();
            })?;
        // A thread that cannot serve fails the start (the guard lets the others go).
        ready
            .await
            .map_err(|_| std::io::Error::other("a serving thread ended at start"))??;
        drained.push(finished);
    }
    drop(listener);
    for finished in drained {
        // An error means the thread is gone (it panicked): nothing left to wait for.
        let _ = finished.await;
    }
    Ok(Served { _release: guard })
}

/// Keeps a timer due within `period` pending on this thread's runtime, for good.
///
/// tokio's timer driver wakes its own thread, with a write to an eventfd and one more turn of
/// the event loop, whenever a timer is armed that is due before every timer pending when the
/// thread last went to sleep. hyper arms the header-read timer (`period`) anew for every
/// request on a kept-alive connection; at full load the timers pending at that moment were
/// often only the longer upstream ones, so about a third of requests paid that write (`strace`,
/// docs/benchmarks.md). With this timer pending, no header-read timer is ever the earliest, and
/// an idle thread wakes once per `period`.
async fn anchor_timers(period: Duration) {
    let mut tick = tokio::time::interval(period.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

impl<S> Shared<S> {
    /// hyper's connection for `protocol`, with the edge stack's clone for this connection,
    /// boxed at its own size (see [`connection`]).
    fn serve<I, B>(
        shared: &Arc<Self>,
        protocol: Protocol,
        io: I,
        peer: SocketAddr,
        watcher: Watcher,
    ) -> impl Future<Output = ()> + Send + '_
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: EdgeService<B>,
        B: EdgeBody,
    {
        let service = PerConnection {
            edge: RefCell::new(shared.edge.clone()),
            shared: Arc::clone(shared),
            peer,
        };
        let io = TokioIo::new(io);
        let builders = &shared.builders;
        // How a connection ends (a reset, a malformed request) is hyper's business.
        match protocol {
            Protocol::Http1 => Either::Left(Box::pin(
                watcher
                    .watch(builders.http1.serve_connection(io, service))
                    .map(drop),
            )),
            Protocol::Http2 => {
                // hyper's HTTP/2 server keeps a connection that carries no stream for ever (a
                // client that sends the preface and waits holds a slot): it is closed once it
                // has carried no request for the idle timeout.
                let streams = ActiveStreams::new();
                let service = CountStreams {
                    inner: service,
                    streams: Arc::clone(&streams),
                };
                let connection = watcher
                    .watch(builders.http2.serve_connection(io, service))
                    .map(drop);
                Either::Right(Box::pin(close_when_idle(
                    connection,
                    streams,
                    shared.http2_idle_timeout,
                )))
            }
        }
    }
}

/// One thread's accept loop, then its share of the graceful shutdown.
async fn serve_thread<S, B>(
    listener: TcpListener,
    shared: &Arc<Shared<S>>,
    stopping: &CancellationToken,
) where
    S: EdgeService<B>,
    B: EdgeBody,
{
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let Some(address_permit) = shared.per_address.acquire(peer.ip()) else {
            tracing::warn!(%peer, "per-address connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let Ok(permit) = Arc::clone(&shared.permits).try_acquire_owned() else {
            tracing::warn!(%peer, "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            Arc::clone(shared),
            stream,
            peer,
            (permit, address_permit),
            graceful.watcher(),
        ));
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(shared.grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

/// One accepted connection, from its first byte to its end.
///
/// A connection's task lives as long as the connection, and a future reserves room for the
/// largest state it can reach, so what this task holds is paid by every open stream. Only the
/// protocol choice runs inline; the TLS handshake and hyper's connection (with the edge stack's
/// clone, built only then) are boxed at their own size, so a plain HTTP/1 connection does not
/// carry room for a TLS session or an HTTP/2 connection. This took the task from 6.7 KiB to
/// 0.6 KiB, and 5,000 held streams from 224 to 201 MB.
async fn connection<S, B>(
    shared: Arc<Shared<S>>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: (OwnedSemaphorePermit, AddressPermit),
    watcher: Watcher,
) where
    S: EdgeService<B>,
    B: EdgeBody,
{
    let _permit = permit;
    let Some(acceptor) = shared.tls.as_ref().map(|t| t.acceptor()) else {
        // Choosing the protocol has the same deadline as a request head: a client that
        // connects and says nothing is cut off like one that stops mid-head.
        let Ok(Ok(protocol)) =
            tokio::time::timeout(shared.header_read_timeout, sniff(&stream)).await
        else {
            tracing::debug!(%peer, "no request before the header deadline");
            return;
        };
        Shared::serve(&shared, protocol, stream, peer, watcher).await;
        return;
    };
    // Boxed: only TLS connections pay for the session the handshake builds.
    Box::pin(tls_connection(shared, stream, peer, acceptor, watcher)).await;
}

/// The rest of [`connection`] for the TLS listener: the handshake, then ALPN's protocol.
async fn tls_connection<S, B>(
    shared: Arc<Shared<S>>,
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    watcher: Watcher,
) where
    S: EdgeService<B>,
    B: EdgeBody,
{
    // The handshake has the same deadline as a request head.
    let Ok(Ok(stream)) =
        tokio::time::timeout(shared.header_read_timeout, acceptor.accept(stream)).await
    else {
        tracing::debug!(%peer, "TLS handshake failed or timed out");
        return;
    };
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    Shared::serve(&shared, protocol, stream, peer, watcher).await;
}

/// The edge stack as hyper's service for one connection. hyper calls a service through `&self`
/// and tower's need `&mut self`, so the usual adapter clones the whole stack for every request;
/// this one keeps one clone per connection and calls it in place. A stack that is not ready at
/// once (none of ours, which are always ready), or a cell already borrowed (`call` does not
/// re-enter, so never), falls back to a fresh clone driven to readiness: the tower contract
/// holds either way.
struct PerConnection<S> {
    edge: RefCell<S>,
    shared: Arc<Shared<S>>,
    peer: SocketAddr,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for PerConnection<S>
where
    // `Response = Response<B>` ties `B` to `S` (a bound through `EdgeService<B>` alone does not).
    S: EdgeService<B> + Service<Request<Body>, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = Infallible;
    /// Boxed: hyper keeps a slot of this type's size for the connection's whole life, and the
    /// edge stack's future is ~0.7 KiB. Boxed, it is freed as soon as the answer's head is
    /// ready instead of being held by every open stream and idle keep-alive connection.
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let timeout = self.shared.body_read_timeout;
        let mut request = request.map(|body| Body::new(DeadlineBody::new(body, timeout)));
        request
            .extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(self.peer));
        if let Ok(mut edge) = self.edge.try_borrow_mut() {
            if let Poll::Ready(Ok(())) = edge.poll_ready(&mut Context::from_waker(Waker::noop())) {
                return Box::pin(edge.call(request));
            }
        }
        Box::pin(self.shared.edge.clone().oneshot(request))
    }
}

/// [`PerConnection`] for HTTP/2: counts each request as open until its answer's body is done,
/// for [`close_when_idle`].
struct CountStreams<S> {
    inner: PerConnection<S>,
    streams: Arc<ActiveStreams>,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for CountStreams<S>
where
    S: EdgeService<B> + Service<Request<Body>, Response = Response<B>>,
    B: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.streams.start();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| TrackedBody::new(body, guard)))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a plain-TCP client speaks, from its first bytes, without consuming them.
/// HTTP/1 is decided by the first byte that differs from the preface (the second byte of a
/// `POST`); only a client that sends part of the preface and pauses is peeked at again.
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        let seen = stream.peek(&mut first).await?;
        if seen == 0 {
            // Closed before a request: HTTP/1 reads the end and lets the connection go.
            return Ok(Protocol::Http1);
        }
        if first[..seen] != H2_PREFACE[..seen] {
            return Ok(Protocol::Http1);
        }
        if seen == H2_PREFACE.len() {
            return Ok(Protocol::Http2);
        }
        // Peeking again at once would return the same bytes: wait for the rest.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// hyper's two servers, configured once.
struct Builders {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
}

impl Builders {
    fn new(header_read_timeout: Duration) -> Self {
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(header_read_timeout)
            .keep_alive(true);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Self { http1, http2 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Connects to a fresh listener, sends `first`, and returns what `sniff` makes of it.
    async fn sniffed(first: &'static [u8], then: Option<&'static [u8]>) -> Protocol {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(first).await.unwrap();
            if let Some(rest) = then {
                tokio::time::sleep(Duration::from_millis(30)).await;
                stream.write_all(rest).await.unwrap();
            }
            // Keep the connection open until the server has looked.
            tokio::time::sleep(Duration::from_millis(200)).await;
        });
        let (stream, _) = listener.accept().await.unwrap();
        let protocol = sniff(&stream).await.unwrap();
        // Nothing was consumed: the bytes are still there for hyper.
        let mut buf = vec![0u8; first.len()];
        let seen = stream.peek(&mut buf).await.unwrap();
        assert_eq!(&buf[..seen], &first[..seen]);
        client.abort();
        protocol
    }

    #[tokio::test]
    async fn the_preface_means_http2_and_anything_else_http1() {
        assert_eq!(sniffed(H2_PREFACE, None).await, Protocol::Http2);
        assert_eq!(
            sniffed(b"POST /v1/chat/completions HTTP/1.1\r\n", None).await,
            Protocol::Http1
        );
        assert_eq!(sniffed(b"GET / HTTP/1.1\r\n", None).await, Protocol::Http1);
        // "PRI" alone is not enough: the method of an HTTP/1 request may start the same way.
        assert_eq!(
            sniffed(b"PRI / HTTP/1.1\r\n\r\n", None).await,
            Protocol::Http1
        );
        // A preface split across two writes is waited for, not mistaken for HTTP/1.
        assert_eq!(
            sniffed(&H2_PREFACE[..5], Some(&H2_PREFACE[5..])).await,
            Protocol::Http2
        );
    }
}

//! Connections to providers, the exchange of one request for an answer head on them, the body
//! read straight from the socket, and the per-thread pools that keep idle connections.
//!
//! There is no connection task and no channel between the request and its connection: the
//! request's own task writes, reads the head, and then reads the body as it is polled. A body
//! read to its end on a connection that may be kept goes back to the pool at once; a body
//! dropped early (the client went away) closes its connection, which is how the provider
//! learns the request was cancelled.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use cortex_domain::egress::EgressPolicy;
use http::uri::Authority;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::h1::{self, BodyDecoder, Decoded, ResponseHead, WireError};

/// The first read reserves this much; reads that fill the buffer double it up to `MAX_READ`.
const FIRST_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Below this much free room the buffer is topped up before a read.
const MIN_ROOM: usize = 1024;
/// An idle connection older than this is closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per provider address and serving thread.
const MAX_IDLE_PER_HOST: usize = 256;
/// How often every pool is swept for connections that expired or that the provider closed.
const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// The socket, plain or TLS.
enum Io {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Tcp(stream) => stream.is_write_vectored(),
            Io::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Io::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Why an exchange failed, and whether the request can be sent again on a new connection.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The connection failed or closed before any byte of an answer: on a pooled connection
    /// this is the provider having closed it while idle, and a new connection may be tried.
    NoAnswer,
    /// The answer was cut short or is not HTTP/1.1 we accept.
    Bad(WireError),
    /// The connection broke after part of an answer arrived.
    Broken,
}

/// One connection to a provider with its read buffer.
pub(crate) struct Conn {
    io: Io,
    buf: BytesMut,
    next_read: usize,
}

impl Conn {
    fn new(io: Io) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            next_read: FIRST_READ,
        }
    }

    /// Reads what is available into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < MIN_ROOM {
            self.buf.reserve(self.next_read);
        }
        let room = self.buf.capacity() - self.buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.buf
        ))?;
        if read == room && self.next_read < MAX_READ {
            self.next_read *= 2;
        }
        Poll::Ready(Ok(read))
    }

    /// Sends the request and reads up to the end of the final answer's head, skipping `1xx`
    /// interim answers.
    ///
    /// A provider may answer before it has read the whole request and then close, as one
    /// refusing an oversized body with 413 does; the write then fails. Whatever answer arrived
    /// is still read and returned (its connection is not reused), so the client gets the
    /// provider's refusal rather than a 502, and the provider is not marked down for it.
    async fn exchange(&mut self, head: &[u8], body: &Bytes) -> Result<ResponseHead, ExchangeError> {
        let mut request = head.chain(&body[..]);
        let written =
            self.io.write_all_buf(&mut request).await.is_ok() && self.io.flush().await.is_ok();
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                if let Some(mut head) = h1::take_head(&mut self.buf).map_err(ExchangeError::Bad)? {
                    head.keep_alive &= written;
                    return Ok(head);
                }
            }
            // A head that keeps growing is refused by `take_head` once it passes `MAX_HEAD`.
            match std::future::poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) | Err(_) if !answered => return Err(ExchangeError::NoAnswer),
                Ok(0) => return Err(ExchangeError::Bad(WireError::CutShort)),
                Err(_) => return Err(ExchangeError::Broken),
                Ok(_) => {}
            }
        }
    }

    /// Whether an idle connection can carry a request: the provider has neither closed it
    /// nor sent anything unasked. Never waits. (Only connections with nothing left in their
    /// buffer are pooled: `H1Body::finish`.)
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        // Pending is the healthy answer: nothing to read. A TLS session ticket that arrived
        // meanwhile is consumed here and also ends in Pending.
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }
}

/// Where a connection goes back to once its body has been read.
pub(crate) struct Home {
    pools: Arc<Pools>,
    index: usize,
    tls: bool,
    authority: Authority,
}

/// What a provider answered: the head's parts the client uses, and the body to read.
pub(crate) struct Answer {
    pub status: u16,
    pub retry_after_secs: Option<u32>,
    pub body: H1Body,
}

/// An answer's body, read from its connection as it is polled.
pub(crate) struct H1Body {
    conn: Option<Conn>,
    decoder: BodyDecoder,
    keep_alive: bool,
    home: Option<Home>,
}

/// The body could not be read to its end.
#[derive(Debug)]
pub(crate) struct Broken;

impl H1Body {
    fn new(conn: Conn, head: &ResponseHead, home: Home) -> Self {
        let mut body = Self {
            conn: Some(conn),
            decoder: BodyDecoder::new(head.framing),
            keep_alive: head.keep_alive,
            home: Some(home),
        };
        if body.decoder == BodyDecoder::Done {
            body.finish();
        }
        body
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Broken>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match self.decoder.decode(&mut conn.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::NeedMore) => {}
                Err(_) => return self.fail(),
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if self.decoder.ends_at_close() => {
                    self.conn = None;
                    self.decoder = BodyDecoder::Done;
                    return Poll::Ready(None);
                }
                Ok(0) | Err(_) => return self.fail(),
                Ok(_) => {}
            }
        }
    }

    fn fail(&mut self) -> Poll<Option<Result<Bytes, Broken>>> {
        self.conn = None;
        self.decoder = BodyDecoder::Done;
        Poll::Ready(Some(Err(Broken)))
    }

    /// The body is complete: the connection goes back to its pool if the provider allows it
    /// and nothing unasked followed the body.
    fn finish(&mut self) {
        let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) else {
            return;
        };
        if self.keep_alive && conn.buf.is_empty() {
            home.pools.put(home.index, home.tls, &home.authority, conn);
        }
    }
}

/// The idle connections to one provider address, oldest first.
struct HostPool {
    tls: bool,
    authority: Authority,
    idle: VecDeque<(Instant, Conn)>,
}

/// Idle connections, one list of addresses per serving thread (see `client::use_pool`). An
/// address is found by comparing its text once per request; the connections under it are a
/// stack (the most recently used is reused first) whose oldest end is closed when it expires.
pub(crate) struct Pools {
    lists: Box<[Mutex<Vec<HostPool>>]>,
}

impl Pools {
    fn new(count: usize) -> Self {
        Self {
            lists: (0..count.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Runs `f` on the pool of `authority` in thread pool `index`, creating it if needed.
    fn with_host<T>(
        &self,
        index: usize,
        tls: bool,
        authority: &Authority,
        f: impl FnOnce(&mut VecDeque<(Instant, Conn)>) -> T,
    ) -> T {
        let mut hosts = self.lists[index % self.lists.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Exact text: every request to a provider uses the authority parsed from its URL.
        let position = hosts
            .iter()
            .position(|host| host.tls == tls && host.authority.as_str() == authority.as_str());
        let position = position.unwrap_or_else(|| {
            hosts.push(HostPool {
                tls,
                authority: authority.clone(),
                idle: VecDeque::new(),
            });
            hosts.len() - 1
        });
        f(&mut hosts[position].idle)
    }

    /// The most recently used idle connection to `authority` that is still usable.
    fn take(&self, index: usize, tls: bool, authority: &Authority) -> Option<Conn> {
        let now = Instant::now();
        self.with_host(index, tls, authority, |idle| {
            expire(idle, now);
            while let Some((_, mut conn)) = idle.pop_back() {
                if conn.is_usable() {
                    return Some(conn);
                }
            }
            None
        })
    }

    /// Closes, in every pool, the connections that have expired and those the provider has
    /// closed (or written to unasked), and forgets addresses left without connections.
    /// Without it, a pool nobody draws from would hold its sockets half-closed (`CLOSE_WAIT`)
    /// until the next request to that provider.
    fn sweep(&self) {
        let now = Instant::now();
        for list in &self.lists {
            let mut hosts = list.lock().unwrap_or_else(PoisonError::into_inner);
            for host in hosts.iter_mut() {
                expire(&mut host.idle, now);
                host.idle.retain_mut(|(_, conn)| conn.is_usable());
            }
            hosts.retain(|host| !host.idle.is_empty());
        }
    }

    fn put(&self, index: usize, tls: bool, authority: &Authority, conn: Conn) {
        let now = Instant::now();
        self.with_host(index, tls, authority, |idle| {
            // Expired connections are closed here too: between sweeps, and where no runtime
            // was current to run the sweep (`Connector::new`).
            expire(idle, now);
            if idle.len() < MAX_IDLE_PER_HOST {
                idle.push_back((now, conn));
            }
        });
    }
}

/// Closes the connections at the old end that have been idle for longer than `IDLE_TIMEOUT`.
fn expire(idle: &mut VecDeque<(Instant, Conn)>, now: Instant) {
    while idle
        .front()
        .is_some_and(|(since, _)| now.duration_since(*since) >= IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

/// How to reach providers: TLS settings, the connect timeout, the egress policy and the idle
/// pools.
pub(crate) struct Connector {
    pub tls: TlsConnector,
    pub connect_timeout: Duration,
    /// Checked against every resolved address before a connection is opened to it.
    pub egress: Arc<EgressPolicy>,
    pub pools: Arc<Pools>,
}

/// Why no answer head was obtained.
#[derive(Debug)]
pub(crate) enum SendError {
    ConnectTimeout,
    Unreachable,
    /// Every address the host resolved to is refused by the egress policy; nothing was
    /// connected to.
    EgressDenied,
    Exchange(ExchangeError),
}

impl Connector {
    /// Inside a Tokio runtime, also starts the task that sweeps the pools every
    /// `SWEEP_EVERY` for as long as they exist.
    pub(crate) fn new(
        tls: TlsConnector,
        connect_timeout: Duration,
        egress: Arc<EgressPolicy>,
        pools: usize,
    ) -> Self {
        let pools = Arc::new(Pools::new(pools));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let pools = Arc::downgrade(&pools);
            runtime.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await;
                loop {
                    every.tick().await;
                    let Some(pools) = pools.upgrade() else { return };
                    pools.sweep();
                }
            });
        }
        Self {
            tls,
            connect_timeout,
            egress,
            pools,
        }
    }

    /// Sends the request on a pooled connection or a new one and returns the answer's status
    /// and body. A pooled connection the provider closed while it was idle (no answer at all)
    /// is replaced by a new one once; an answer that started is never sent twice.
    pub(crate) async fn send(
        &self,
        pool: usize,
        tls: bool,
        authority: &Authority,
        head: &[u8],
        body: &Bytes,
    ) -> Result<Answer, SendError> {
        if let Some(mut conn) = self.pools.take(pool, tls, authority) {
            match conn.exchange(head, body).await {
                Ok(answer) => return Ok(self.answer(pool, tls, authority, conn, &answer)),
                Err(ExchangeError::NoAnswer) => {}
                Err(err) => return Err(SendError::Exchange(err)),
            }
        }
        let mut conn = self.connect(tls, authority).await?;
        match conn.exchange(head, body).await {
            Ok(answer) => Ok(self.answer(pool, tls, authority, conn, &answer)),
            Err(err) => Err(SendError::Exchange(err)),
        }
    }

    fn answer(
        &self,
        pool: usize,
        tls: bool,
        authority: &Authority,
        conn: Conn,
        head: &ResponseHead,
    ) -> Answer {
        let home = Home {
            pools: Arc::clone(&self.pools),
            index: pool,
            tls,
            authority: authority.clone(),
        };
        Answer {
            status: head.status,
            retry_after_secs: head.retry_after_secs,
            body: H1Body::new(conn, head, home),
        }
    }

    /// Resolves the host, and connects to the first address that the egress policy allows
    /// and that accepts. The policy is checked here, after resolution and on every new
    /// connection (pooled ones were checked when opened), so a name that resolves — or is
    /// rebound — to a refused address never gets a connection, let alone a credential.
    async fn connect(&self, tls: bool, authority: &Authority) -> Result<Conn, SendError> {
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        // An IPv6 literal is written in brackets in a URL but not when connecting.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let connect = async {
            let addresses = tokio::net::lookup_host((host, port))
                .await
                .map_err(|_| SendError::Unreachable)?;
            let (mut denied, mut tried, mut tcp) = (false, false, None);
            for address in addresses {
                if !self.egress.allows(host, address.ip()) {
                    // The host name is the operator's own configuration, not a secret.
                    tracing::warn!(host, address = %address.ip(), "egress denied: the upstream address is refused by the egress policy (CORTEX_UPSTREAM_ALLOW; link-local and metadata addresses always)");
                    denied = true;
                    continue;
                }
                tried = true;
                if let Ok(stream) = TcpStream::connect(address).await {
                    tcp = Some(stream);
                    break;
                }
            }
            let tcp = tcp.ok_or(if denied && !tried {
                SendError::EgressDenied
            } else {
                SendError::Unreachable
            })?;
            tcp.set_nodelay(true).map_err(|_| SendError::Unreachable)?;
            if !tls {
                return Ok(Io::Tcp(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|_| SendError::Unreachable)?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|_| SendError::Unreachable)?;
            Ok(Io::Tls(Box::new(stream)))
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => Err(SendError::ConnectTimeout),
            Ok(Err(err)) => Err(err),
            Ok(Ok(io)) => Ok(Conn::new(io)),
        }
    }
}

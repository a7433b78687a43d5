//! Bounds on what one client can hold open: connections per address, and HTTP/2 connections
//! that carry no request.
//!
//! `CORTEX_MAX_CONNECTIONS` alone let one address take every slot (40 sockets trickling bodies
//! or holding an HTTP/2 preface kept everyone else out). [`PerAddress`] caps the connections of
//! one client address (an IPv6 /64 counts as one, as for every per-address limit); peers in
//! `CORTEX_TRUSTED_PROXIES` are not counted, since a reverse proxy carries everyone's traffic.
//! [`ActiveStreams`] counts the requests of an HTTP/2 connection whose answers are not finished,
//! so [`close_when_idle`] can end a connection that has carried none for the idle timeout
//! (hyper's HTTP/2 server has no such timeout; HTTP/1 is covered by hyper's header-read timeout,
//! which also bounds the wait for the next request on a kept-alive connection).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use ipnet::IpNet;

use cortex_gateway::request_meta::AddressBucket;

/// Open connections per client address.
pub struct PerAddress {
    limit: usize,
    exempt: Vec<IpNet>,
    open: Mutex<HashMap<AddressBucket, usize>>,
}

/// One counted connection; dropping it frees the slot.
pub struct AddressPermit {
    table: Arc<PerAddress>,
    /// `None` for an exempt peer.
    bucket: Option<AddressBucket>,
}

impl PerAddress {
    pub fn new(limit: usize, exempt: Vec<IpNet>) -> Arc<Self> {
        Arc::new(Self {
            limit,
            exempt,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer`, or `None` when that address has `limit` open.
    pub fn acquire(self: &Arc<Self>, peer: IpAddr) -> Option<AddressPermit> {
        let peer = peer.to_canonical();
        if self.exempt.iter().any(|net| net.contains(&peer)) {
            return Some(AddressPermit {
                table: Arc::clone(self),
                bucket: None,
            });
        }
        let bucket = AddressBucket::of(peer);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(bucket).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(AddressPermit {
            table: Arc::clone(self),
            bucket: Some(bucket),
        })
    }

    #[cfg(test)]
    fn open_for(&self, peer: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(&AddressBucket::of(peer)).copied().unwrap_or(0)
    }
}

impl Drop for AddressPermit {
    fn drop(&mut self) {
        let Some(bucket) = self.bucket else {
            return;
        };
        let mut open = self.table.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&bucket) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                // Addresses come and go: keep only the ones with something open.
                open.remove(&bucket);
            }
        }
    }
}

/// The unfinished requests of one HTTP/2 connection, and when the last one finished.
pub struct ActiveStreams {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl ActiveStreams {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// Counts a request until the returned guard (kept by its answer's body) is dropped.
    pub fn start(self: &Arc<Self>) -> StreamGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        StreamGuard(Arc::clone(self))
    }

    /// How long the connection has had no unfinished request, if it has none now.
    fn idle_for(&self) -> Option<Duration> {
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        (self.active.load(Ordering::Acquire) == 0).then(|| since.elapsed())
    }
}

pub struct StreamGuard(Arc<ActiveStreams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let streams = &self.0;
        // The time first: a watcher that sees zero active must not see an old time.
        *streams.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        streams.active.fetch_sub(1, Ordering::AcqRel);
    }
}

pin_project_lite::pin_project! {
    /// An answer's body that keeps its request counted until the body is done or dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        guard: StreamGuard,
    }
}

impl<B> TrackedBody<B> {
    pub fn new(inner: B, guard: StreamGuard) -> Self {
        Self { inner, guard }
    }
}

impl<B> HttpBody for TrackedBody<B>
where
    B: HttpBody<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Runs `connection` until it ends, or until it has carried no request for `idle`; then it is
/// dropped, which closes the socket. Only a connection with no unfinished request is closed.
pub async fn close_when_idle<F>(connection: F, streams: Arc<ActiveStreams>, idle: Duration)
where
    F: Future<Output = ()>,
{
    let mut connection = std::pin::pin!(connection);
    loop {
        let wait = match streams.idle_for() {
            Some(quiet) if quiet >= idle => {
                tracing::debug!("closing an HTTP/2 connection idle for the idle timeout");
                return;
            }
            Some(quiet) => idle - quiet,
            None => idle,
        };
        tokio::select! {
            () = &mut connection => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_at_most_its_share_and_gets_it_back() {
        let table = PerAddress::new(2, vec!["10.0.0.0/8".parse().unwrap()]);
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let first = table.acquire(attacker).unwrap();
        let _second = table.acquire(attacker).unwrap();
        assert!(table.acquire(attacker).is_none());
        // The same address through a dual-stack socket is the same client.
        assert!(table.acquire("::ffff:192.0.2.1".parse().unwrap()).is_none());
        // Someone else is unaffected.
        assert!(table.acquire("192.0.2.2".parse().unwrap()).is_some());
        drop(first);
        assert_eq!(table.open_for(attacker), 1);
        assert!(table.acquire(attacker).is_some());
    }

    #[test]
    fn an_ipv6_64_shares_one_allowance_and_proxies_are_exempt() {
        let table = PerAddress::new(1, vec!["10.0.0.0/8".parse().unwrap()]);
        let _one = table.acquire("2001:db8::1".parse().unwrap()).unwrap();
        assert!(table.acquire("2001:db8::ffff:2".parse().unwrap()).is_none());
        assert!(table.acquire("2001:db8:0:1::1".parse().unwrap()).is_some());
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let held: Vec<_> = (0..5).map(|_| table.acquire(proxy)).collect();
        assert!(held.iter().all(Option::is_some));
        assert_eq!(table.open_for(proxy), 0);
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let streams = ActiveStreams::new();
        let idle = Duration::from_millis(50);
        // No request at all: closed after about the idle time.
        let started = Instant::now();
        close_when_idle(std::future::pending::<()>(), Arc::clone(&streams), idle).await;
        assert!(started.elapsed() >= idle);
        // A request in flight keeps it open past the idle time.
        let guard = streams.start();
        let watcher = tokio::spawn(close_when_idle(
            std::future::pending::<()>(),
            Arc::clone(&streams),
            idle,
        ));
        tokio::time::sleep(idle * 4).await;
        assert!(!watcher.is_finished());
        drop(guard);
        tokio::time::timeout(Duration::from_secs(5), watcher)
            .await
            .unwrap()
            .unwrap();
    }
}

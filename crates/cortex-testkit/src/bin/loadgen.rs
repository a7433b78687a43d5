//! The benchmark's open-loop load generator (`scripts/bench.sh`), loopback only.
//!
//! `open`: sends requests at a fixed rate, whatever the server does. Each request's send time
//! is fixed in advance (`start + i / rate`) by a scheduler thread, and latency is measured from
//! that *intended* time, so a server that stalls is charged for every request it held up (no
//! coordinated omission, unlike a closed-loop tool whose clients just wait). Requests go out on
//! a pool of keep-alive HTTP/1.1 connections; a new connection is opened only when every pooled
//! one is busy (its connect time counts against the request, as it would for a real client).
//! Prints one line: counts, achieved rate, and p50/p99/p99.9 of time to last byte and to first
//! body byte, in microseconds (exact percentiles from every sample, nearest rank).
//!
//! `hold`: opens N streamed requests, waits until each has its first chunk, prints `ready`,
//! keeps reading them for the hold time, then closes them all and exits. The benchmark reads
//! the proxy's memory while they are held.
//!
//! ```text
//! loadgen open --url http://127.0.0.1:9102/v1/chat/completions --key ctx_… --body '{…}' \
//!              --rate 1000 --duration 8 [--warmup 1] [--connections 16]
//! loadgen hold --url … --key … --body '{…"stream":true…}' --streams 5000 --hold-secs 15
//! ```
//! Both modes end by themselves: every loop is bounded in count and time.

#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// A request still unanswered this long after its intended send time counts as failed.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    path: String,
    authorization: Option<HeaderValue>,
    body: Bytes,
}

impl Target {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::post(self.path.as_str())
            .body(Full::new(self.body.clone()))
            .unwrap_or_default();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(value) = &self.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        request
    }
}

struct Args {
    mode: String,
    target: Target,
    rate: f64,
    duration: Duration,
    warmup: Duration,
    connections: usize,
    streams: usize,
    hold: Duration,
    parallel: usize,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mode = args.next().ok_or("usage: loadgen open|hold --url URL …")?;
    if mode != "open" && mode != "hold" {
        return Err(format!("unknown mode {mode} (open or hold)"));
    }
    let (mut url, mut key, mut body) = (None, None, None);
    let (mut rate, mut duration, mut warmup) = (100.0, 5.0, 1.0);
    let (mut connections, mut streams, mut hold, mut parallel) = (16usize, 1000usize, 10.0, 256);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n >= 0.0)
                .ok_or_else(|| format!("{flag} needs a non-negative number"))
        };
        match flag.as_str() {
            "--url" => url = Some(value),
            "--key" => key = Some(value),
            "--body" => body = Some(value),
            "--rate" => rate = number(&value)?,
            "--duration" => duration = number(&value)?,
            "--warmup" => warmup = number(&value)?,
            "--connections" => connections = number(&value)? as usize,
            "--streams" => streams = number(&value)? as usize,
            "--hold-secs" => hold = number(&value)?,
            "--parallel" => parallel = (number(&value)? as usize).max(1),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("http://")
        .ok_or("--url must be http://127.0.0.1:PORT/path")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| "--url must name an IP address and port")?;
    if !addr.ip().is_loopback() {
        return Err("loadgen only sends to loopback addresses".to_owned());
    }
    if rate <= 0.0 {
        return Err("--rate must be above zero".to_owned());
    }
    let authorization = match key {
        Some(key) => Some(
            HeaderValue::try_from(format!("Bearer {key}")).map_err(|_| "--key is not a header")?,
        ),
        None => None,
    };
    Ok(Args {
        mode,
        target: Target {
            addr,
            host: HeaderValue::try_from(authority).map_err(|_| "bad authority")?,
            path: if path.is_empty() { "/" } else { path }.to_owned(),
            authorization,
            body: Bytes::from(body.unwrap_or_default()),
        },
        rate,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
        connections,
        streams,
        hold: Duration::from_secs_f64(hold),
        parallel,
    })
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Idle keep-alive connections. The lock is never held across an await.
#[derive(Default)]
struct Pool(Mutex<Vec<Sender>>);

impl Pool {
    fn take(&self) -> Option<Sender> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put(&self, sender: Sender) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(sender);
    }
}

/// A ready connection: an idle pooled one that is still open, else a new one.
async fn ready_sender(pool: &Pool, addr: SocketAddr) -> Result<Sender, String> {
    while let Some(mut sender) = pool.take() {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let mut sender = connect(addr).await?;
    sender.ready().await.map_err(|e| format!("ready: {e}"))?;
    Ok(sender)
}

struct Sample {
    ok: bool,
    first_byte: Duration,
    last_byte: Duration,
    done: Instant,
}

/// Sends one request and reads the whole body. Times are from `intended`.
async fn one_request(pool: &Pool, target: &Target, intended: Instant) -> Result<Sample, String> {
    let mut sender = ready_sender(pool, target.addr).await?;
    let response = sender
        .send_request(target.request())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let ok = response.status().is_success();
    let mut body = response.into_body();
    let mut first_byte = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if first_byte.is_none() && frame.data_ref().is_some_and(|d| !d.is_empty()) {
            first_byte = Some(intended.elapsed());
        }
    }
    let done = Instant::now();
    let last_byte = done.duration_since(intended);
    pool.put(sender);
    Ok(Sample {
        ok,
        first_byte: first_byte.unwrap_or(last_byte),
        last_byte,
        done,
    })
}

/// Nearest-rank percentile of sorted microsecond samples.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // The epsilon keeps float error from pushing an exact rank up by one (0.999 × 1000).
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

async fn open_loop(args: Args) -> ExitCode {
    let target = Arc::new(args.target);
    let pool = Arc::new(Pool::default());
    for _ in 0..args.connections {
        match connect(target.addr).await {
            Ok(sender) => pool.put(sender),
            Err(err) => {
                eprintln!("loadgen: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let warmup_count = (args.warmup.as_secs_f64() * args.rate).round() as u64;
    let measured_count = (args.duration.as_secs_f64() * args.rate).round() as u64;
    let total = warmup_count + measured_count;

    // The schedule runs on its own thread with the OS timer (tens of microseconds of jitter),
    // not on tokio's millisecond timer wheel, which would add up to a millisecond to every
    // request. Lateness of the scheduler itself is charged to the request, never hidden.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, bool)>();
    let scheduler = std::thread::spawn(move || {
        let start = Instant::now() + Duration::from_millis(20);
        let mut measured_start = None;
        for i in 0..total {
            let at = start + interval.mul_f64(i as f64);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let measured = i >= warmup_count;
            if measured && measured_start.is_none() {
                measured_start = Some(at);
            }
            if tx.send((at, measured)).is_err() {
                break;
            }
        }
        measured_start
    });

    let mut tasks = Vec::with_capacity(usize::try_from(measured_count).unwrap_or(0));
    while let Some((intended, measured)) = rx.recv().await {
        let (pool, target) = (pool.clone(), target.clone());
        let task = tokio::spawn(async move {
            let remaining = REQUEST_DEADLINE.saturating_sub(intended.elapsed());
            match tokio::time::timeout(remaining, one_request(&pool, &target, intended)).await {
                Ok(result) => result,
                Err(_) => Err("deadline".to_owned()),
            }
        });
        if measured {
            tasks.push(task);
        }
    }
    let measured_start = scheduler.join().ok().flatten();
    let (mut last, mut first) = (Vec::with_capacity(tasks.len()), Vec::new());
    let (mut ok, mut non_2xx, mut failed) = (0u64, 0u64, 0u64);
    let mut last_error = None;
    let mut finished: Option<Instant> = None;
    for task in tasks {
        match task.await {
            Ok(Ok(sample)) => {
                if sample.ok {
                    ok += 1;
                } else {
                    non_2xx += 1;
                }
                finished = finished.max(Some(sample.done));
                last.push(sample.last_byte.as_micros() as u64);
                first.push(sample.first_byte.as_micros() as u64);
            }
            Ok(Err(err)) => {
                failed += 1;
                last_error = Some(err);
            }
            Err(_) => failed += 1,
        }
    }
    let elapsed = match (measured_start, finished) {
        (Some(start), Some(end)) => end.saturating_duration_since(start).as_secs_f64(),
        _ => 0.0,
    };
    last.sort_unstable();
    first.sort_unstable();
    if let Some(err) = last_error {
        eprintln!("loadgen: last error: {err}");
    }
    println!(
        "requests={} ok={ok} non2xx={non_2xx} failed={failed} rps={:.1} p50_us={} p99_us={} p999_us={} max_us={} ttfb_p50_us={} ttfb_p99_us={} ttfb_p999_us={}",
        measured_count,
        if elapsed > 0.0 { (ok + non_2xx) as f64 / elapsed } else { 0.0 },
        percentile(&last, 50.0),
        percentile(&last, 99.0),
        percentile(&last, 99.9),
        last.last().copied().unwrap_or(0),
        percentile(&first, 50.0),
        percentile(&first, 99.0),
        percentile(&first, 99.9),
    );
    if failed > 0 || non_2xx > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Opens one stream and reads it until `until`; signals `established` after its first chunk.
async fn hold_one(
    target: &Target,
    permits: &tokio::sync::Semaphore,
    established: &AtomicUsize,
    ready: &tokio::sync::Notify,
    release: &tokio::sync::watch::Receiver<bool>,
) -> Result<(), String> {
    let (mut body, _sender) = {
        // Bounded parallelism while connecting, so the listen backlog never overflows.
        let _permit = permits.acquire().await.map_err(|e| e.to_string())?;
        let mut sender = connect(target.addr).await?;
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let response = sender
            .send_request(target.request())
            .await
            .map_err(|e| format!("send: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let mut body = response.into_body();
        loop {
            match body.frame().await {
                Some(Ok(frame)) if frame.data_ref().is_some_and(|d| !d.is_empty()) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("body: {e}")),
                None => return Err("stream ended before it was held".to_owned()),
            }
        }
        // The sender must live as long as the body, or hyper closes the connection.
        (body, sender)
    };
    established.fetch_add(1, Ordering::SeqCst);
    ready.notify_one();
    let mut release = release.clone();
    loop {
        tokio::select! {
            frame = body.frame() => match frame {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("body while held: {e}")),
                None => return Err("stream ended while held".to_owned()),
            },
            _ = release.changed() => return Ok(()),
        }
    }
}

async fn hold_streams(args: Args) -> ExitCode {
    let target = Arc::new(args.target);
    let permits = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let established = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let ready = Arc::new(tokio::sync::Notify::new());
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::with_capacity(args.streams);
    for _ in 0..args.streams {
        let (target, permits, established, failed, ready, release) = (
            target.clone(),
            permits.clone(),
            established.clone(),
            failed.clone(),
            ready.clone(),
            release_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let result = hold_one(&target, &permits, &established, &ready, &release).await;
            if let Err(err) = result {
                if failed.fetch_add(1, Ordering::SeqCst) == 0 {
                    eprintln!("loadgen: a stream failed: {err}");
                }
                ready.notify_one();
            }
        }));
    }
    // Wait (bounded) until every stream is open or has failed.
    let setup_deadline = Instant::now() + Duration::from_secs(120);
    let started = Instant::now();
    while established.load(Ordering::SeqCst) + failed.load(Ordering::SeqCst) < args.streams
        && Instant::now() < setup_deadline
    {
        let _ = tokio::time::timeout(Duration::from_millis(100), ready.notified()).await;
    }
    println!(
        "established={} failed={} setup_s={:.2}",
        established.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
    println!("ready");
    tokio::time::sleep(args.hold).await;
    let _ = release_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let failed = failed.load(Ordering::SeqCst);
    println!("released failed_total={failed}");
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("loadgen: {message}");
            return ExitCode::from(2);
        }
    };
    // One thread for the client side keeps its CPU share small and predictable on a small
    // machine; the open-loop scheduler has its own thread.
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        eprintln!("loadgen: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        match args.mode.as_str() {
            "open" => open_loop(args).await,
            _ => hold_streams(args).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Result<Args, String> {
        parse_args(line.split_whitespace().map(str::to_owned))
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&samples, 50.0), 500);
        assert_eq!(percentile(&samples, 99.0), 990);
        assert_eq!(percentile(&samples, 99.9), 999);
        assert_eq!(percentile(&samples, 100.0), 1000);
        assert_eq!(percentile(&[7], 99.9), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn only_loopback_targets_and_sane_options_are_accepted() {
        let ok =
            args("open --url http://127.0.0.1:9/v1/chat/completions --rate 1000 --key k").unwrap();
        assert_eq!(ok.target.path, "/v1/chat/completions");
        assert_eq!(ok.target.authorization.unwrap(), "Bearer k");
        assert!((ok.rate - 1000.0).abs() < f64::EPSILON);
        assert!(args("open --url http://10.0.0.1:9/ --rate 1").is_err());
        assert!(args("open --url http://example.com/ --rate 1").is_err());
        assert!(args("open --url https://127.0.0.1:9/ --rate 1").is_err());
        assert!(args("open --url http://127.0.0.1:9/ --rate 0").is_err());
        assert!(args("open --url http://127.0.0.1:9/ --rate -5").is_err());
        assert!(args("burst --url http://127.0.0.1:9/").is_err());
        assert!(args("hold --url http://127.0.0.1:9/ --bogus 1").is_err());
    }
}

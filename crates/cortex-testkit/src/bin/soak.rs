//! Soak driver for `scripts/soak.sh`: a steady, open-loop mix of traffic spread over several
//! Cortex instances for a fixed time, with an admin change every few seconds, while it samples
//! each instance's resident memory from `/proc`. It prints a line every sample period and a
//! summary: requests, errors by kind, and memory after warm-up against memory at the end.
//!
//! soak --instances http://127.0.0.1:9201,… --pids 123,… --key ctx_… --admin-token JWT
//!      [--duration-sec 600] [--rps 150] [--warmup-sec 120] [--sample-sec 10]

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Args {
    instances: Vec<String>,
    pids: Vec<u32>,
    key: String,
    admin_token: String,
    duration: Duration,
    rps: u32,
    warmup: Duration,
    sample: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut map = BTreeMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        map.insert(flag, value);
    }
    let take = |name: &str| map.get(name).cloned().ok_or(format!("{name} is required"));
    let number = |name: &str, default: u64| -> Result<u64, String> {
        map.get(name)
            .map(|v| v.parse().map_err(|_| format!("{name}: not a number")))
            .unwrap_or(Ok(default))
    };
    let instances: Vec<String> = take("--instances")?.split(',').map(str::to_owned).collect();
    let pids = take("--pids")?
        .split(',')
        .map(|p| p.parse().map_err(|_| "--pids: not a pid".to_owned()))
        .collect::<Result<Vec<u32>, String>>()?;
    Ok(Args {
        instances,
        pids,
        key: take("--key")?,
        admin_token: take("--admin-token")?,
        duration: Duration::from_secs(number("--duration-sec", 600)?),
        rps: u32::try_from(number("--rps", 150)?).map_err(|_| "--rps too large")?,
        warmup: Duration::from_secs(number("--warmup-sec", 120)?),
        sample: Duration::from_secs(number("--sample-sec", 10)?),
    })
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[derive(Default)]
struct Tally {
    requests: u64,
    /// "kind status" → count, for everything that was not the expected answer.
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }
}

async fn one_request(http: &reqwest::Client, base: &str, key: &str, n: u64, tally: &Mutex<Tally>) {
    let kind = match n % 10 {
        0 => "models",
        1 | 2 => "stream",
        _ => "chat",
    };
    let outcome = match kind {
        "models" => http
            .get(format!("{base}/v1/models"))
            .bearer_auth(key)
            .send()
            .await
            .map(|r| r.status().as_u16()),
        _ => {
            let stream = kind == "stream";
            let sent = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({ "model": "llama", "stream": stream, "messages": [{ "role": "user", "content": "soak" }] }))
                .send()
                .await;
            match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.text().await {
                        // A 200 stream must end with [DONE]; a cut one is counted apart.
                        Ok(body) if status == 200 && stream && !body.contains("[DONE]") => Ok(599),
                        Ok(_) => Ok(status),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            }
        }
    };
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.requests += 1;
    match outcome {
        Ok(200) => {}
        Ok(599) => tally.error(format!("{kind} 200 without [DONE]")),
        Ok(status) => tally.error(format!("{kind} {status}")),
        Err(_) => tally.error(format!("{kind} transport")),
    }
}

/// Creates a key through one instance and revokes it through the next, checking the third
/// refuses it: the cross-instance path an operator relies on.
async fn admin_cycle(http: &reqwest::Client, args: &Args, n: usize, tally: &Mutex<Tally>) {
    let create = &args.instances[n % args.instances.len()];
    let revoke = &args.instances[(n + 1) % args.instances.len()];
    let check = &args.instances[(n + 2) % args.instances.len()];
    let result: Result<(), String> = async {
        let created: Value = http
            .post(format!("{create}/admin/keys"))
            .bearer_auth(&args.admin_token)
            .json(&json!({ "name": format!("soak-{n}"), "scopes": ["chat"] }))
            .send()
            .await
            .map_err(|_| "create transport")?
            .json()
            .await
            .map_err(|_| "create body")?;
        let id = created["id"].as_str().ok_or("create answer")?;
        let key = created["key"].as_str().ok_or("create answer")?;
        let revoked = http
            .delete(format!("{revoke}/admin/keys/{id}"))
            .bearer_auth(&args.admin_token)
            .send()
            .await
            .map_err(|_| "revoke transport")?;
        if revoked.status() != 200 {
            return Err(format!("revoke {}", revoked.status()));
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let status = http
                .get(format!("{check}/v1/models"))
                .bearer_auth(key)
                .send()
                .await
                .map_err(|_| "check transport")?
                .status();
            if status == 401 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("revoked key still accepted after 1 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    .await;
    let mut tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    tally.requests += 1;
    if let Err(what) = result {
        tally.error(format!("admin {what}"));
    }
}

/// Least-squares slope of one instance's RSS over the samples, in KiB per minute: a steady
/// creep that a short run keeps under the 10 % bound still shows here.
fn slope_kib_per_minute(samples: &[&(Duration, Vec<u64>)], instance: usize) -> f64 {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|(t, rss)| (t.as_secs_f64() / 60.0, rss[instance] as f64))
        .collect();
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (mean_t, mean_r) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let covariance: f64 = points.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_r)).sum();
    let variance: f64 = points.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(args) => Arc::new(args),
        Err(err) => {
            eprintln!("soak: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap_or_else(|_| reqwest::Client::new());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let mut samples: Vec<(Duration, Vec<u64>)> = Vec::new();

    // Admin changes every 5 s, beside the data-plane load.
    let admin = {
        let (http, args, tally) = (http.clone(), args.clone(), tally.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            for n in 0.. {
                tick.tick().await;
                admin_cycle(&http, &args, n, &tally).await;
            }
        })
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(args.rps)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_sample = Duration::ZERO;
    let mut n: u64 = 0;
    println!("elapsed_s requests errors rss_kib_per_instance");
    while started.elapsed() < args.duration {
        tick.tick().await;
        let base = args.instances[(n as usize) % args.instances.len()].clone();
        let (http, key, counts) = (http.clone(), args.key.clone(), tally.clone());
        tokio::spawn(async move { one_request(&http, &base, &key, n, &counts).await });
        n += 1;
        if started.elapsed() >= next_sample {
            let rss: Vec<u64> = args.pids.iter().map(|p| rss_kib(*p).unwrap_or(0)).collect();
            let (requests, errors) = {
                let t = tally.lock().unwrap_or_else(|e| e.into_inner());
                (t.requests, t.errors.values().sum::<u64>())
            };
            println!(
                "{:>9} {requests:>8} {errors:>6} {}",
                started.elapsed().as_secs(),
                rss.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
            );
            samples.push((started.elapsed(), rss));
            next_sample += args.sample;
        }
    }
    admin.abort();
    tokio::time::sleep(Duration::from_secs(2)).await; // let the last requests answer

    let tally = tally.lock().unwrap_or_else(|e| e.into_inner());
    let errors: u64 = tally.errors.values().sum();
    println!();
    println!(
        "requests {} in {:.0} s ({:.1}/s), errors {errors}",
        tally.requests,
        args.duration.as_secs_f64(),
        tally.requests as f64 / args.duration.as_secs_f64()
    );
    for (what, count) in &tally.errors {
        println!("  error {what}: {count}");
    }
    let after_warmup: Vec<&(Duration, Vec<u64>)> =
        samples.iter().filter(|(t, _)| *t >= args.warmup).collect();
    let mut flat = true;
    if let (Some(first), Some(last)) = (after_warmup.first(), after_warmup.last()) {
        for (i, pid) in args.pids.iter().enumerate() {
            let base = first.1[i].max(1);
            let peak = after_warmup.iter().map(|s| s.1[i]).max().unwrap_or(0);
            let end = last.1[i];
            let growth = (peak as f64 / base as f64 - 1.0) * 100.0;
            let ok = growth <= 10.0;
            flat &= ok;
            println!(
                "instance {i} (pid {pid}): RSS after warm-up {} KiB, peak {} KiB, end {} KiB, growth {growth:+.1}%, trend {:+.1} KiB/min {}",
                base,
                peak,
                end,
                slope_kib_per_minute(&after_warmup, i),
                if ok { "PASS (<= 10%)" } else { "FAIL (> 10%)" }
            );
        }
    } else {
        println!("no samples after warm-up: run longer than --warmup-sec");
        flat = false;
    }
    if errors == 0 && flat {
        println!("soak: PASS");
        std::process::ExitCode::SUCCESS
    } else {
        println!("soak: FAIL");
        std::process::ExitCode::FAILURE
    }
}

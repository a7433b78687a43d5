//! The fake OpenAI-compatible upstream as a standalone process, for benchmarks and manual
//! trials. Prints its base URL and serves until killed. It does not record requests (a long
//! benchmark would grow it without bound).
//!
//! ```text
//! fake-upstream 127.0.0.1:9100                              # 3 chunks, 5 ms apart
//! fake-upstream 127.0.0.1:9100 --chunks 8 --chunk-delay-ms 1
//! fake-upstream 127.0.0.1:9100 --chunks 600 --chunk-delay-ms 1000   # slow: streams stay open
//! ```

#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use cortex_testkit::{FakeUpstream, FakeUpstreamOptions};

fn parse_args() -> Result<(String, FakeUpstreamOptions), String> {
    let mut addr = "127.0.0.1:0".to_owned();
    let mut options = FakeUpstreamOptions {
        record: false,
        ..FakeUpstreamOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a whole number"))
        };
        match arg.as_str() {
            "--chunks" => options.chunks = number("--chunks")? as usize,
            "--chunk-delay-ms" => {
                options.chunk_delay = Duration::from_millis(number("--chunk-delay-ms")?);
            }
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            other => other.clone_into(&mut addr),
        }
    }
    Ok((addr, options))
}

fn main() -> ExitCode {
    let (addr, options) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("fake-upstream: {message}");
            return ExitCode::from(2);
        }
    };
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("fake-upstream: cannot start the async runtime");
        return ExitCode::FAILURE;
    };
    runtime.block_on(async move {
        let upstream = FakeUpstream::start_with(&addr, options).await;
        println!("{}", upstream.base_url());
        std::future::pending::<()>().await;
    });
    ExitCode::SUCCESS
}

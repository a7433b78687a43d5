//! The fake OpenAI-compatible upstream as a standalone process, for benchmarks and manual
//! trials: `fake-upstream 127.0.0.1:9100`. Prints its address and serves until killed.

#![allow(clippy::print_stdout)]

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".to_owned());
    let upstream = cortex_testkit::FakeUpstream::start_on(&addr).await;
    println!("{}", upstream.base_url());
    std::future::pending::<()>().await;
}

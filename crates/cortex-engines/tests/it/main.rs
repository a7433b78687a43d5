//! Integration tests of cortex-engines, one binary: the supervisor with the fake engine
//! (`supervisor.rs`), the docker runtime against a real daemon (`docker.rs`) and a real
//! llama-server (`llama_server.rs`). The last two need what `scripts/engines-prereqs.sh`
//! provides; without it they fail under `CI=true` and skip (saying why) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

mod docker;
mod llama_server;
mod supervisor;
mod support;

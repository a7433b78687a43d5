//! End-to-end tests of the real `cortex` binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // Test code: a failed step should fail loudly.

mod cluster;
mod engines;
mod login;
mod maintenance;
mod ops;
mod policies;
mod process;
mod scale;
mod sdk;
mod sdk_doors;
mod serve;
mod signals;
mod tenancy;
mod traces;

pub use process::CortexProcess;

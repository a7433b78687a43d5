//! End-to-end tests of the real `cortex` binary.

mod process;
mod serve;
mod sdk;

pub use process::CortexProcess;

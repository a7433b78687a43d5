//! Operations shared by the admin API and the `cortex` command: audit verification with signed
//! checkpoints, the production check, the redacted config export, and the storage-root
//! containment check for every file the server writes.

pub mod audit;
pub mod check;
pub mod export;
pub mod storage;

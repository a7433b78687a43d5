//! Operations shared by the admin API and the `cortex` command: audit verification with signed
//! checkpoints, the production check, the redacted config export and its import, master key
//! checks and rotation, backup and restore, and the storage-root containment check for every file
//! the server writes.

pub mod audit;
pub mod backup;
pub mod check;
pub mod export;
pub mod fingerprint;
pub mod import;
pub mod secrets;
pub mod storage;

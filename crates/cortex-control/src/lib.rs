//! The control plane's services: what the admin API and the command line both do, written
//! once. Keys ([`keys`]), users and their TOTP enrolment ([`users`]), providers and models
//! ([`catalog`]), sessions: login, refresh, logout and password change ([`sessions`]), first
//! start ([`bootstrap`]), operations ([`ops`]: audit verification and
//! checkpoints, the production check, export and import, master-key rotation, backup and
//! restore, the storage root) and SIEM forwarding ([`audit_forward`]).
//!
//! Nothing here knows HTTP. Services return their own errors ([`ControlError`] and the
//! operation-specific ones in [`ops`]); the HTTP crate renders them in the API's error shape and
//! the command line prints them whole.

pub mod audit_forward;
pub mod bootstrap;
pub mod catalog;
pub mod engines;
pub mod error;
pub mod keys;
pub mod oidc;
pub mod ops;
pub mod orgs;
pub mod passkeys;
pub mod policies;
pub mod service_accounts;
pub mod sessions;
pub mod users;

pub use error::ControlError;

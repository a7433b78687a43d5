//! Cortex's domain: principals, roles and permissions, API key format, scopes, limits, audit
//! events and the clock. Pure: no IO, no HTTP, no database. Everything here can be unit tested
//! without a runtime.

pub mod account;
pub mod allowed_ips;
pub mod api_key;
pub mod audit;
pub mod clock;
pub mod egress;
pub mod features;
pub mod key_limits;
pub mod policy;
pub mod provider;
pub mod role;
pub mod routing;
pub mod tenancy;
pub mod time_fmt;

pub use account::{AccountKind, SessionMethod};
pub use allowed_ips::AllowedIps;
pub use api_key::{ApiKeyFormatError, ParsedApiKey, Scope};
pub use clock::{Clock, SystemClock};
pub use key_limits::{KeyLimits, LimitCeiling};
pub use provider::ProviderKind;
pub use role::{Permission, Role};
pub use routing::RoutingStrategy;
pub use tenancy::{Budget, BudgetPeriod, Tenant, DEFAULT_ORG};

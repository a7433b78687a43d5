//! Middleware, one file per concern. The order they run in is fixed in `app.rs`.

pub mod allowed_host;
pub mod client_ip;
pub mod csrf;
pub mod error_shape;
pub mod inline;
pub mod request_id;
pub mod security_headers;

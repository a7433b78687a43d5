//! The admin console under `/ui/`: three static files embedded in the binary (no CDN, no
//! build step), served with a strict Content-Security-Policy (no inline script or style). The
//! page talks to the admin API with the session cookie; the server enforces every permission
//! regardless of what the page shows.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../console/index.html");
const LOGIN_HTML: &str = include_str!("../console/login.html");
const APP_JS: &str = include_str!("../console/app.js");
const LOGIN_JS: &str = include_str!("../console/login.js");
const APP_CSS: &str = include_str!("../console/app.css");

/// No inline script or style anywhere; images may be data: URLs (the TOTP QR code).
pub const CONSOLE_CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn page(body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The console itself: only with a valid session, else 303 to the login page.
async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match crate::admin::principal::authenticate_cookie(&app, &headers).await {
        Some(_) => page(INDEX_HTML),
        None => Redirect::to("/ui/login").into_response(),
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(|| async { page(LOGIN_HTML) }))
        .route(
            "/ui/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/assets/login.js",
            get(|| async { asset("text/javascript; charset=utf-8", LOGIN_JS) }),
        )
        .route(
            "/ui/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/ui/{*rest}",
            get(|| async { (StatusCode::SEE_OTHER, [(header::LOCATION, "/ui/")]) }),
        )
}

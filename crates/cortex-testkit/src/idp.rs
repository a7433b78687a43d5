//! A real OpenID Provider for single sign-on tests: `console-tests/oidc-provider.mjs`
//! (node-oidc-provider, a certified implementation) run by Node on a loopback port. Its
//! packages are installed by `npm install` in `console-tests/` (the test script does it); a
//! test that cannot start it fails, never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};

/// The client Cortex is registered as at the provider.
pub const OIDC_CLIENT_ID: &str = "cortex-test";
pub const OIDC_CLIENT_SECRET: &str = "cortex-test-client-secret-4f1d9a";

pub struct OpenIdProvider {
    child: Child,
    /// `http://127.0.0.1:<port>`: the provider's issuer identifier.
    pub issuer: String,
    _dir: tempfile::TempDir,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../console-tests/oidc-provider.mjs")
}

impl OpenIdProvider {
    /// Starts the provider with the client registered for `redirect_uris` (and
    /// `post_logout_redirect_uris`) and `accounts` (`{ "<sub>": { <claims> } }`).
    pub async fn start(
        redirect_uris: &[String],
        post_logout_redirect_uris: &[String],
        accounts: Value,
    ) -> OpenIdProvider {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("provider.json");
        std::fs::write(
            &config,
            json!({
                "client_id": OIDC_CLIENT_ID,
                "client_secret": OIDC_CLIENT_SECRET,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "accounts": accounts,
            })
            .to_string(),
        )
        .unwrap();
        let script = script();
        assert!(
            script
                .parent()
                .unwrap()
                .join("node_modules/oidc-provider")
                .is_dir(),
            "oidc-provider is not installed: run `npm install` in console-tests (scripts/test.sh does)"
        );
        let mut child = Command::new("node")
            .arg(&script)
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("starting node for the OpenID Provider: {e}"));
        // The first line names the issuer; the rest of its output is drained (to our stderr)
        // for as long as it runs, so a later log line never finds the pipe closed.
        let stdout = child.stdout.take().unwrap();
        let (first_line, issuer) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = first_line.send(first);
            for line in lines.map_while(Result::ok) {
                eprintln!("oidc-provider: {line}");
            }
        });
        let line = tokio::time::timeout(std::time::Duration::from_secs(30), issuer)
            .await
            .expect("the OpenID Provider did not start within 30 s")
            .unwrap_or_default();
        let issuer = line
            .trim()
            .strip_prefix("issuer=")
            .unwrap_or_else(|| panic!("the OpenID Provider said {line:?}"))
            .to_owned();
        OpenIdProvider {
            child,
            issuer,
            _dir: dir,
        }
    }

    /// Adds (or replaces) accounts while the provider runs.
    pub async fn set_accounts(&self, accounts: Value) {
        let response = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("{}/test/accounts", self.issuer))
            .json(&accounts)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
    }
}

impl Drop for OpenIdProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

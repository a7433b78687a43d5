//! What kind of account a user is and how a session began (SPEC §19). An account's kind decides
//! which ways of signing in it has: a password (with TOTP or passkeys as a second factor, or a
//! passkey alone), single sign-on at an OpenID Provider, or a service account's client
//! credentials. The services check the kind; the store only keeps it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountKind {
    /// A person with a password (every user from before single sign-on).
    Local,
    /// A person created by single sign-on; no password, the identity provider authenticates.
    Sso,
    /// A service account: OAuth 2.0 client credentials, bearer tokens only, no console.
    Service,
}

impl AccountKind {
    pub const ALL: [AccountKind; 3] = [AccountKind::Local, AccountKind::Sso, AccountKind::Service];

    pub fn as_str(self) -> &'static str {
        match self {
            AccountKind::Local => "local",
            AccountKind::Sso => "sso",
            AccountKind::Service => "service",
        }
    }

    pub fn parse(text: &str) -> Option<AccountKind> {
        AccountKind::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// A person (local or single sign-on), as opposed to a service account.
    pub fn is_person(self) -> bool {
        !matches!(self, AccountKind::Service)
    }

    /// Whether this account's own second factors (TOTP, passkeys) are asked for and count for
    /// `CORTEX_REQUIRE_MFA_FOR`. Single sign-on users are authenticated by their identity
    /// provider, whose policy decides their second factor; a service account's secret is its
    /// only credential.
    pub fn has_local_factors(self) -> bool {
        matches!(self, AccountKind::Local)
    }
}

/// How a session began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionMethod {
    Password,
    Passkey,
    Sso,
    /// A service account's access token (OAuth 2.0 client credentials).
    ClientCredentials,
}

impl SessionMethod {
    pub const ALL: [SessionMethod; 4] = [
        SessionMethod::Password,
        SessionMethod::Passkey,
        SessionMethod::Sso,
        SessionMethod::ClientCredentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionMethod::Password => "password",
            SessionMethod::Passkey => "passkey",
            SessionMethod::Sso => "sso",
            SessionMethod::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(text: &str) -> Option<SessionMethod> {
        SessionMethod::ALL.into_iter().find(|m| m.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in AccountKind::ALL {
            assert_eq!(AccountKind::parse(kind.as_str()), Some(kind));
        }
        for method in SessionMethod::ALL {
            assert_eq!(SessionMethod::parse(method.as_str()), Some(method));
        }
        assert_eq!(AccountKind::parse("Local"), None);
        assert_eq!(SessionMethod::parse(""), None);
    }

    #[test]
    fn only_local_accounts_have_local_second_factors() {
        assert!(AccountKind::Local.has_local_factors());
        assert!(!AccountKind::Sso.has_local_factors());
        assert!(!AccountKind::Service.has_local_factors());
        assert!(AccountKind::Sso.is_person());
        assert!(!AccountKind::Service.is_person());
    }
}

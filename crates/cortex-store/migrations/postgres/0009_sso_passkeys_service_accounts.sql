-- Single sign-on, passkeys and service accounts (SPEC §19, issue 30). The SQLite migration
-- of the same number must describe the same tables. This one migration holds the tables of all
-- three, so that the schema does not change again as each part lands.
--
-- users.kind: how an account signs in. 'local' (every user before this migration): a password,
-- with TOTP or passkeys as a second factor, or a passkey alone when passkey_only is set. 'sso':
-- created by OpenID Connect sign-in; no usable password, its identity is in user_identities.
-- 'service': a service account (OAuth 2.0 client credentials); its credentials are in
-- service_accounts, it never opens the console. Checked by the services, no CHECK constraint.
ALTER TABLE users ADD COLUMN kind TEXT NOT NULL DEFAULT 'local';
ALTER TABLE users ADD COLUMN passkey_only BOOLEAN NOT NULL DEFAULT FALSE;

-- How a session began: 'password', 'passkey', 'sso' or 'client_credentials' (a service
-- account's token: a session without a cookie or refresh token, ending with the token).
ALTER TABLE sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'password';

-- A service account's client credentials. client_id is public; only the SHA-256 of the secret
-- (256 random bits) is stored. The account's role, organization and disabled flag are its
-- users row's.
CREATE TABLE service_accounts (
    user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    client_id TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secret_rotated_at BIGINT NOT NULL,
    last_token_at BIGINT
);

-- Who a single sign-on user is at their identity provider: the issuer and its subject, never
-- the username (a name can be reused; the subject cannot).
CREATE TABLE user_identities (
    issuer TEXT NOT NULL,
    subject TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    last_login_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identities_user ON user_identities(user_id);

-- Sign-ins in progress, each used once: an OpenID Connect authorization request (state, nonce,
-- PKCE verifier) or a WebAuthn challenge. The browser (or client) holds a random token; the id
-- is its SHA-256, and the flow's state is sealed with the master key. Rows expire after minutes
-- and are deleted when used.
CREATE TABLE auth_challenges (
    id TEXT PRIMARY KEY,
    purpose TEXT NOT NULL,
    user_id TEXT REFERENCES users(id) ON DELETE CASCADE,
    sealed BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX auth_challenges_expiry ON auth_challenges(expires_at);

-- Passkeys (WebAuthn credentials), several per user, each named. credential is the verified
-- public key with its signature counter (JSON, no secret); sign_count is the highest counter
-- seen, moved only forward, so an assertion from a cloned authenticator is refused.
CREATE TABLE passkeys (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    credential_id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    credential TEXT NOT NULL,
    sign_count BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    UNIQUE (user_id, name)
);
CREATE INDEX passkeys_user ON passkeys(user_id);

-- Organizations and teams (SPEC §18). The PostgreSQL migration of the same number must describe
-- the same tables.
--
-- Every user, key, usage record and audit event belongs to one organization; every row from
-- before this migration belongs to 'default', the fixed organization of the first admin, whose
-- admins manage all the others. Queries are scoped in the store (cortex-store: `Tenant`), not
-- by foreign keys: the org_id columns added below carry no REFERENCES clause, because SQLite
-- cannot add one with a non-NULL default, and usage and audit rows must outlive a deleted
-- organization anyway. Deleting an organization that still has users or keys is refused by the
-- service; its teams go with it (ON DELETE CASCADE).
--
-- Budgets are {budget_usd, budget_period}: both NULL (no budget) or both set, period 'daily',
-- 'monthly' or 'total' (UTC); checked by the services, no CHECK constraint, as in 0005/0006.
-- allowed_models is a JSON array of model names; NULL means every model.
CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    budget_usd REAL,
    budget_period TEXT,
    tokens_per_minute INTEGER,
    allowed_models TEXT,
    created_at INTEGER NOT NULL
);
INSERT INTO organizations (id, name, created_at)
VALUES ('default', 'default', CAST(strftime('%s', 'now') AS INTEGER) * 1000);

CREATE TABLE teams (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    budget_usd REAL,
    budget_period TEXT,
    tokens_per_minute INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

CREATE TABLE team_members (
    team_id TEXT NOT NULL REFERENCES teams(id) ON DELETE CASCADE,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX team_members_user ON team_members(user_id);

ALTER TABLE users ADD COLUMN org_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE users ADD COLUMN budget_usd REAL;
ALTER TABLE users ADD COLUMN budget_period TEXT;
CREATE INDEX users_org ON users(org_id);

ALTER TABLE api_keys ADD COLUMN org_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE api_keys ADD COLUMN team_id TEXT;
CREATE INDEX api_keys_org ON api_keys(org_id);

ALTER TABLE usage_records ADD COLUMN org_id TEXT NOT NULL DEFAULT 'default';
ALTER TABLE usage_records ADD COLUMN team_id TEXT;
CREATE INDEX usage_org ON usage_records(org_id, created_at);

ALTER TABLE audit_events ADD COLUMN org_id TEXT NOT NULL DEFAULT 'default';
CREATE INDEX audit_org ON audit_events(org_id, seq);

-- Gateway policies (SPEC §21): the response cache and the guardrails of an organization, one
-- of its models or one of its keys. The migration of the same number for the other database
-- must describe the same tables.
--
-- scope is 'organization', 'model' or 'key'; target the organization's id, the model's name or
-- the key's id. spec is the PolicySpec as JSON (cache and guardrails, either optional); the
-- store refuses a scope it does not know when it reads, as in 0005, so there is no CHECK.
-- version moves on every change, so a cached answer or an audit event can name the policy it
-- was made under. One policy per scope and target in an organization: UNIQUE below.
-- A policy of a key or model that goes away stays (harmless: nothing resolves to it) until it
-- is deleted; the organization's deletion takes its policies with it.
CREATE TABLE gateway_policies (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    spec TEXT NOT NULL,
    version INTEGER NOT NULL DEFAULT 1,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (org_id, scope, target)
);

-- cached: the answer came from the response cache, not from a provider (no upstream attempt,
-- no cost). Rows written before this column were all answered upstream.
ALTER TABLE usage_records ADD COLUMN cached INTEGER NOT NULL DEFAULT 0;

-- The guardrail events page reads one organization's guardrail.* events newest first; they may
-- be few among many other events, so they are found by action rather than by a walk back
-- through the whole log. (Audit events are written per change and per guardrail hit, not per
-- request: the extra index write is cheap.)
CREATE INDEX audit_action ON audit_events(action, seq);

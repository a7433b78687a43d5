-- SIEM forwarding (SPEC §8): how far each sink has been sent, so forwarding resumes after a
-- restart or an outage without losing or reordering events. One row per sink (its URL without
-- credentials). The lease lets one instance forward at a time when several share the database.
-- The SQLite migration of the same number must describe the same table.
CREATE TABLE audit_forward_cursors (
    sink TEXT PRIMARY KEY,
    forwarded_seq BIGINT NOT NULL,
    lease_owner TEXT NOT NULL DEFAULT '',
    lease_until BIGINT NOT NULL DEFAULT 0,
    updated_at BIGINT NOT NULL
);

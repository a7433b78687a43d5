-- Key versions assigned by the database, and keys suspended while their owner is disabled.
-- The SQLite migration of the same number must describe the same tables.
--
-- Every transaction that writes api_keys rows first takes the next number from the one row of
-- api_key_version (UPDATE ... RETURNING) and stamps it on every row it writes. The counter row
-- is locked until that transaction ends, so a higher version never commits before a lower one:
-- a cache that has seen version v has, in the same read, seen every row of every version up to
-- v, and polls only for rows above it. Wall clocks of different hosts play no part (keycache.rs).
CREATE TABLE api_key_version (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO api_key_version (id, version) VALUES (1, 1);

ALTER TABLE api_keys ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
-- TRUE while the owner is disabled: refused like a revoked key, but lifted when the owner is
-- enabled again (revoked_at is never touched by that).
ALTER TABLE api_keys ADD COLUMN owner_disabled BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE api_keys SET owner_disabled = TRUE
WHERE owner_user_id IN (SELECT id FROM users WHERE disabled);
CREATE INDEX api_keys_version ON api_keys(version);

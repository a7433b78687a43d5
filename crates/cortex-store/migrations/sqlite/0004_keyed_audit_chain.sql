-- The audit chain is keyed (HMAC-SHA256 under a key derived from the master key) and the signed
-- checkpoints chain to each other (ARCHITECTURE.md, "Decisions"). The PostgreSQL migration of the
-- same number must describe the same columns.
--
-- chain_key_id names the key the chain is under (an HMAC of a fixed label, not the key). NULL: the
-- chain was never keyed (a database from before this migration, or one without events yet); the
-- first start with the master key verifies such a chain and re-keys it in one transaction.
ALTER TABLE audit_head ADD COLUMN chain_key_id TEXT;

-- The seq of the checkpoint each checkpoint's signed message chains to (0: the genesis). Rows
-- from before this migration hold 0 until the re-keying re-signs them in order.
ALTER TABLE audit_checkpoints ADD COLUMN prev_seq INTEGER NOT NULL DEFAULT 0;

-- How far each SIEM sink has been sent the signed checkpoints (a copy outside the database).
ALTER TABLE audit_forward_cursors ADD COLUMN checkpoint_seq INTEGER NOT NULL DEFAULT 0;

-- Health-aware routing (SPEC §16). The PostgreSQL migration of the same number must describe
-- the same tables.
--
-- weight is a provider's share under a model's 'weighted' strategy (1 to 1000; the service
-- refuses others). health_check_path is the path below base_url the active health check asks
-- (NULL: 'models'). strategy is 'round_robin', 'weighted', 'least_latency' or 'priority'; no
-- CHECK constraints, as in 0005: the store reads a value it does not know as the default, with
-- a warning (catalog.rs), and a later strategy needs no table rebuild on SQLite. Every row from
-- before this migration gets the defaults, which is how it was routed until now.
-- attempts is how many upstream attempts a request took (1 unless it was retried or failed over).
ALTER TABLE providers ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
ALTER TABLE providers ADD COLUMN health_check_path TEXT;
ALTER TABLE models ADD COLUMN strategy TEXT NOT NULL DEFAULT 'round_robin';
ALTER TABLE usage_records ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;

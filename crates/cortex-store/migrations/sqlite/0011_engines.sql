-- Inference engines (SPEC §17): model servers Cortex starts and routes to. The PostgreSQL
-- migration of the same number must describe the same tables.
--
-- Engines are deployment-wide, like providers. spec is the create body as JSON without
-- hf_token; hf_token_sealed is the token sealed with the master key (engine id as associated
-- data), like providers.api_key_sealed. desired_state is 'running' or 'stopped': the admin API
-- and the CLI write it, and every serving process reconciles its engines to it (polled).
-- generation moves on every start and restart, so a restart asked of a running engine is seen.
-- No CHECK constraints, as in 0005: the store refuses a value it does not know when it reads.
CREATE TABLE engines (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    engine TEXT NOT NULL,
    runtime TEXT NOT NULL,
    spec TEXT NOT NULL,
    hf_token_sealed BLOB,
    desired_state TEXT NOT NULL DEFAULT 'stopped',
    generation INTEGER NOT NULL DEFAULT 0,
    auto_start INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

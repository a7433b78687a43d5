-- Provider kinds (SPEC §15): how a provider takes its credential and where its endpoints are.
-- The SQLite migration of the same number must describe the same tables.
--
-- kind is 'openai', 'anthropic' or 'azure'; every provider stored before kinds existed is an
-- OpenAI-style server. No CHECK constraint: the store refuses an unknown kind when it reads
-- the row (StoreError::Corrupt), as on SQLite, where a CHECK would need a table rebuild.
-- api_version is Azure's api-version query value or Anthropic's anthropic-version header (NULL:
-- the kind's default). responses_api is TRUE for an OpenAI provider that serves /responses itself.
ALTER TABLE providers ADD COLUMN kind TEXT NOT NULL DEFAULT 'openai';
ALTER TABLE providers ADD COLUMN api_version TEXT;
ALTER TABLE providers ADD COLUMN responses_api BOOLEAN NOT NULL DEFAULT FALSE;

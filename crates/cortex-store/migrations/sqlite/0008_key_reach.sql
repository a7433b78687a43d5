-- What a key may reach (SPEC §18, issue 29). The migration of the same number for the other
-- database must describe the same columns.
--
-- allowed_ips: a JSON array of CIDRs a key may be used from (NULL: anywhere); the service
-- validates every entry, so a stored value always parses.
-- max_output_tokens: a model's output cap, set on a budgeted request that carries none, so the
-- cost reserved before it leaves bounds what it can spend (NULL: the gateway's default, 4096).
ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT;
ALTER TABLE models ADD COLUMN max_output_tokens BIGINT;

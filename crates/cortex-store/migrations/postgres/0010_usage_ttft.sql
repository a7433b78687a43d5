-- Usage analytics (SPEC §20, issue 31). The migration of the same number for the other database
-- must describe the same columns.
--
-- ttft_ms: a stream's time from the request's arrival to the first byte sent to the client
-- (NULL for answers that were not streamed, and for rows written before this column), so
-- time-to-first-token percentiles come from the stored records like latency's.
-- No new index: the analytics read a time range (usage_created) and group it; every index is
-- one more write per proxied request.
ALTER TABLE usage_records ADD COLUMN ttft_ms BIGINT;

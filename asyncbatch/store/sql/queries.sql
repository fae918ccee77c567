-- Named queries of the SQLite store. `-- name: x` starts query x; asyncbatch.store.sql loads them.

-- name: insert_job
INSERT INTO jobs (id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata,
                  status, cancel_requested, created_at, updated_at)
VALUES (:id, :provider, :base_url, :provider_options, :endpoint, :completion_window, :max_attempts, :metadata,
        :status, 0, :created_at, :updated_at);

-- name: insert_request
INSERT INTO requests (job_id, custom_id, url, model, body, size) VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id, custom_id) DO NOTHING;

-- name: get_job
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status, cancel_requested,
       created_at, updated_at
FROM jobs WHERE id = ?;

-- name: list_jobs
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status, cancel_requested,
       created_at, updated_at
FROM jobs ORDER BY created_at, id;

-- name: count_states
-- pending, in_flight, failed, cancelled, total: each from its own (partial) index, never the table.
SELECT
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'pending'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'in_flight'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'failed'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'cancelled'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1);

-- name: set_job_status
UPDATE jobs SET status = ?, updated_at = ? WHERE id = ? AND status != ?;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?;

-- name: cancel_pending
UPDATE requests SET state = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by the user'
WHERE job_id = ? AND state = 'pending';

-- name: pending_for_planning
SELECT rid, custom_id, url, model, size, attempts FROM requests
WHERE job_id = ? AND state = 'pending' ORDER BY url, model, rid LIMIT ?;

-- name: insert_shard
INSERT INTO shards (job_id, attempt, token, phase, endpoint, model, request_count, bytes, created_at)
VALUES (?, 1, ?, 'planned', ?, ?, 0, 0, ?);

-- name: size_shard
UPDATE shards SET attempt = ?, request_count = ?, bytes = ? WHERE id = ?;

-- name: insert_member
INSERT INTO shard_members (shard_id, wire_id, rid, attempt) VALUES (?, ?, ?, ?);

-- name: assign_requests
-- ?2: a JSON array of rids. One statement per page: no per-row binding, which cost twice the update itself.
UPDATE requests SET state = 'in_flight', shard_id = ?1, attempts = attempts + 1
WHERE rid IN (SELECT value FROM json_each(?2));

-- name: claimable_shards
-- Live shards not already leased by this owner: its own tasks renew those, so a run loop step that claims
-- costs nothing per shard in flight.
SELECT id, lease_owner, lease_expires FROM shards
WHERE job_id = ? AND phase NOT IN ('ingested', 'abandoned')
  AND (lease_owner IS NULL OR lease_owner != ? OR lease_expires < ?);

-- name: claim_shard
UPDATE shards SET lease_owner = :owner, lease_expires = :expires
WHERE id = :id AND phase NOT IN ('ingested', 'abandoned')
  AND (lease_owner IS NULL OR lease_owner = :owner OR lease_expires < :now OR lease_owner = :dead);

-- name: renew_lease
UPDATE shards SET lease_expires = ? WHERE id = ? AND lease_owner = ?;

-- name: renew_leases
UPDATE shards SET lease_expires = ? WHERE lease_owner = ? AND phase NOT IN ('ingested', 'abandoned');

-- name: release_lease
UPDATE shards SET lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ?;

-- name: get_shard
SELECT id, job_id, attempt, token, phase, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at
FROM shards WHERE id = ?;

-- name: job_shards
SELECT id, job_id, attempt, token, phase, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at
FROM shards WHERE job_id = ? ORDER BY id;

-- name: last_failed_with
-- The newest shard of the job whose batch failed with one of the error codes of a JSON array.
SELECT id, job_id, attempt, token, phase, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at
FROM shards
WHERE job_id = ? AND batch_status = 'failed'
  AND EXISTS (SELECT 1 FROM json_each(shards.errors) e WHERE json_extract(e.value, '$.code') IN
              (SELECT value FROM json_each(?)))
ORDER BY id DESC LIMIT 1;

-- name: spool_rows
SELECT m.wire_id, r.url, r.body FROM shard_members m JOIN requests r ON r.rid = m.rid
WHERE m.shard_id = ? AND m.wire_id > ? ORDER BY m.wire_id LIMIT ?;

-- name: shard_uploaded
UPDATE shards SET phase = 'uploaded', file_id = ? WHERE id = ? AND lease_owner = ? AND phase = 'planned';

-- name: shard_creating
UPDATE shards SET phase = 'creating', creating_at = ? WHERE id = ? AND lease_owner = ? AND phase = 'uploaded';

-- name: shard_submitted
UPDATE shards SET phase = 'submitted', batch_id = ?, batch_status = ?, provider_counts = ?, errors = ?
WHERE id = ? AND lease_owner = ? AND phase = 'creating';

-- name: recorded_batch_ids
SELECT batch_id FROM shards WHERE batch_id IS NOT NULL AND created_at >= ?;

-- name: shard_polled
UPDATE shards SET batch_status = ?, provider_counts = ?, errors = ?, output_file_id = ?, error_file_id = ?
WHERE id = ? AND lease_owner = ? AND phase = 'submitted';

-- name: shard_ended
UPDATE shards SET phase = 'ended', ended_at = ?
WHERE id = ? AND lease_owner = ? AND phase = 'submitted';

-- name: shard_ingested
UPDATE shards SET phase = 'ingested', lease_owner = NULL, lease_expires = NULL
WHERE id = ? AND lease_owner = ? AND phase = 'ended';

-- name: shard_abandoned
UPDATE shards SET phase = 'abandoned', errors = ?, lease_owner = NULL, lease_expires = NULL
WHERE id = ? AND phase IN ('planned', 'uploaded', 'creating');

-- name: member_requests
SELECT wire_id, rid, attempt FROM shard_members WHERE shard_id = ?;

-- name: member_requests_of
SELECT wire_id, rid, attempt FROM shard_members
WHERE shard_id = ? AND wire_id IN (SELECT value FROM json_each(?));

-- name: upsert_result
-- Parameters: a ResultRow's fields in order (?1 rid .. ?14 line_id; ?4, the request state, is for
-- settle_request), then ?15 the shard id.
INSERT INTO results (rid, attempt, shard_id, outcome, status_code, body, error_code, error_message,
                     input_tokens, output_tokens, cached_tokens, model, request_id, line_id)
VALUES (?1, ?2, ?15, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT (rid, attempt) DO UPDATE SET
    shard_id = excluded.shard_id, outcome = excluded.outcome, status_code = excluded.status_code,
    body = excluded.body, error_code = excluded.error_code, error_message = excluded.error_message,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    cached_tokens = excluded.cached_tokens, model = excluded.model, request_id = excluded.request_id,
    line_id = excluded.line_id;

-- name: settle_request
-- The same parameters as upsert_result; a request that succeeded keeps no error.
UPDATE requests SET state = ?4, error_code = iif(?4 = 'succeeded', NULL, ?7),
                    error_message = iif(?4 = 'succeeded', NULL, ?8)
WHERE rid = ?1 AND shard_id = ?15 AND state = 'in_flight';

-- name: settle_succeeded
-- Most results succeed: they are settled in one statement per shard (?1: a JSON array of rids, in order),
-- the rest one by one through settle_request.
UPDATE requests SET state = 'succeeded', error_code = NULL, error_message = NULL
WHERE rid IN (SELECT value FROM json_each(?1)) AND shard_id = ?2 AND state = 'in_flight';

-- name: shard_tally
SELECT
  COALESCE(SUM(r.attempts = m.attempt AND r.state = 'succeeded'), 0),
  COALESCE(SUM(r.attempts = m.attempt AND r.state IN ('failed', 'cancelled')), 0),
  COALESCE(SUM(r.attempts > m.attempt OR r.state IN ('pending', 'in_flight')), 0)
FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE m.shard_id = ?;

-- name: upsert_orphan
INSERT OR REPLACE INTO orphan_results (shard_id, wire_id, line) VALUES (?, ?, ?);

-- name: cancel_shard_members
-- Members are found through shard_members (its primary key), not by a scan of every request in the store.
UPDATE requests SET state = ?, error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?4) AND shard_id = ?4 AND state = 'in_flight';

-- name: refund_shard_members
-- A try that does not count (the provider's queue was full, nothing ran): the attempt is given back.
UPDATE requests SET state = 'pending', attempts = attempts - 1, error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?3) AND shard_id = ?3 AND state = 'in_flight';

-- name: requeue_shard_members
UPDATE requests SET state = CASE WHEN attempts < ? THEN 'pending' ELSE 'failed' END,
                    error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?4) AND shard_id = ?4 AND state = 'in_flight';

-- name: live_work
SELECT
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'pending')
    + (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'in_flight'),
  (SELECT COUNT(*) FROM shards WHERE job_id = ?2 AND phase NOT IN ('ingested', 'abandoned'));

-- name: final_results
-- `+r.state`: walk requests_job in rid order (a page costs its own rows), not requests_pending + a sort.
SELECT r.rid, r.custom_id, r.state, r.attempts, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id
FROM requests r
LEFT JOIN results s ON s.rid = r.rid AND s.attempt = r.attempts
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.job_id = ? AND +r.state IN ('succeeded', 'failed', 'cancelled') AND r.rid > ? AND r.consumed <= ?
ORDER BY r.rid LIMIT ?;

-- name: all_attempt_results
SELECT r.rid, r.custom_id, r.state, s.attempt, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id
FROM requests r
JOIN results s ON s.rid = r.rid
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.job_id = ? AND (r.rid, s.attempt) > (?, ?)
ORDER BY r.rid, s.attempt LIMIT ?;

-- name: orphans
SELECT o.shard_id, o.wire_id, o.line FROM orphan_results o JOIN shards s ON s.id = o.shard_id
WHERE s.job_id = ? ORDER BY o.shard_id, o.wire_id;

-- name: acknowledge
UPDATE requests SET consumed = 1 WHERE job_id = ? AND custom_id = ?;

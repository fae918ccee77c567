-- Named queries of the PostgreSQL store. `-- name: x` starts query x; asyncbatch.store.sql loads them.
-- Parameters are named (%(name)s). Shard changes name the lease they are made under (lease_owner and lease_token:
-- the fencing token), and every time they compare is the database's: now().

-- name: schema_version
SELECT max(version) FROM schema_version;

-- name: has_tables
SELECT to_regclass('jobs') IS NOT NULL, to_regclass('schema_version') IS NOT NULL;

-- name: set_schema_version
INSERT INTO schema_version (version) VALUES (%(version)s);

-- name: migration_lock
-- One upgrade at a time, whoever opens the store: the others wait, then find the schema done. Held by the
-- session, until its connection closes.
SELECT pg_advisory_lock(7308402913);

-- name: xid
-- This transaction's id: if the connection drops while COMMIT is in flight, txid_status tells whether it landed.
SELECT txid_current();

-- name: ping
SELECT 1;

-- name: xid_status
SELECT txid_status(%(xid)s);

-- name: insert_job
INSERT INTO jobs (id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata,
                  status, cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash)
VALUES (%(id)s, %(provider)s, %(base_url)s, %(provider_options)s, %(endpoint)s, %(completion_window)s,
        %(max_attempts)s, %(metadata)s, %(status)s, false, %(created_at)s, %(updated_at)s, %(routes)s, %(owner)s,
        %(idempotency_key)s, %(content_hash)s);

-- name: complete_job
-- What is known once every request is in: the routes they use, their digest, their number and rid range.
UPDATE jobs SET routes = %(routes)s, content_hash = %(content_hash)s, request_count = %(count)s,
                (first_rid, last_rid) = (SELECT min(rid), max(rid) FROM requests WHERE job_id = %(id)s)
WHERE id = %(id)s;

-- name: copy_requests
COPY requests (job_id, custom_id, route, url, model, body, size) FROM STDIN (FORMAT BINARY);

-- name: taken_custom_ids
SELECT custom_id FROM requests WHERE job_id = %(job_id)s AND custom_id = ANY(%(custom_ids)b::text[]);

-- name: get_job
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status,
       cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash
FROM jobs WHERE id = %(job_id)s;

-- name: get_job_for_update
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status,
       cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash
FROM jobs WHERE id = %(job_id)s FOR UPDATE;

-- name: list_jobs
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status,
       cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash
FROM jobs
WHERE (%(owner)s::text IS NULL OR owner = %(owner)s) AND (NOT %(unfinished)s OR status IN ('open', 'running'))
ORDER BY created_at, id;

-- name: unfinished_job_ids
SELECT id FROM jobs WHERE status IN ('open', 'running') ORDER BY created_at, id;

-- name: job_by_idempotency_key
SELECT id FROM jobs WHERE COALESCE(owner, '') = COALESCE(%(owner)s, '') AND idempotency_key = %(key)s;

-- name: job_by_content_hash
SELECT id FROM jobs WHERE content_hash = %(key)s AND COALESCE(owner, '') = COALESCE(%(owner)s, '')
ORDER BY created_at, id LIMIT 1;

-- name: job_by_batch_id
SELECT j.id FROM shards s JOIN jobs j ON j.id = s.job_id
WHERE s.batch_id = %(key)s AND COALESCE(j.owner, '') = COALESCE(%(owner)s, '');

-- name: job_count
SELECT count(*) FROM jobs;

-- name: job_exists
SELECT 1 FROM jobs WHERE id = %(job_id)s;

-- name: set_routes
UPDATE jobs SET routes = %(routes)s, updated_at = %(now)s WHERE id = %(job_id)s;

-- name: count_states
-- pending, in_flight, failed, cancelled, total: each from its own (partial) index.
SELECT
  (SELECT count(*) FROM requests WHERE job_id = %(job_id)s AND state = 'pending'),
  (SELECT count(*) FROM requests WHERE job_id = %(job_id)s AND state = 'in_flight'),
  (SELECT count(*) FROM requests WHERE job_id = %(job_id)s AND state = 'failed'),
  (SELECT count(*) FROM requests WHERE job_id = %(job_id)s AND state = 'cancelled'),
  (SELECT request_count FROM jobs WHERE id = %(job_id)s);

-- name: set_job_status
UPDATE jobs SET status = %(status)s, updated_at = %(now)s WHERE id = %(job_id)s AND status != %(status)s;

-- name: request_cancel
UPDATE jobs SET cancel_requested = true, updated_at = %(now)s WHERE id = %(job_id)s;

-- name: cancel_pending
UPDATE requests SET state = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by the user'
WHERE job_id = %(job_id)s AND state = 'pending';

-- name: pending_for_planning
-- Rows another planner is reading are skipped, not waited for: two planners of one job fill different shards.
SELECT rid, custom_id, route, url, model, size, attempts FROM requests
WHERE job_id = %(job_id)s AND state = 'pending'
ORDER BY route, url, COALESCE(model, ''), rid LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: pending_after
-- The next page of a planning session, after the last request it read: the index is entered there, instead of
-- walking again past the entries of the requests this session took (they stay in the index until it commits).
SELECT rid, custom_id, route, url, model, size, attempts FROM requests
WHERE job_id = %(job_id)s AND state = 'pending'
  AND (route, url, COALESCE(model, ''), rid) > (%(route)s, %(url)s, %(model)s, %(rid)s)
ORDER BY route, url, COALESCE(model, ''), rid LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: insert_shard
INSERT INTO shards (job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, created_at)
VALUES (%(job_id)s, 1, %(token)s, 'planned', %(route)s, %(endpoint)s, %(model)s, 0, 0, extract(epoch FROM now()))
RETURNING id;

-- name: size_shard
UPDATE shards SET attempt = %(attempt)s, request_count = %(count)s, bytes = %(bytes)s WHERE id = %(shard_id)s;

-- name: insert_members
INSERT INTO shard_members (shard_id, wire_id, rid, attempt)
SELECT %(shard_id)s, u.wire_id, u.rid, u.attempt
FROM unnest(%(wire_ids)b::text[], %(rids)b::bigint[], %(attempts)b::integer[]) AS u(wire_id, rid, attempt);

-- name: assign_requests
UPDATE requests SET state = 'in_flight', shard_id = %(shard_id)s, attempts = attempts + 1
WHERE rid = ANY(%(rids)b::bigint[]) AND state = 'pending';

-- name: lease_holders
SELECT DISTINCT lease_owner FROM shards
WHERE job_id = %(job_id)s AND phase NOT IN ('ingested', 'abandoned') AND lease_owner IS NOT NULL
  AND lease_expires >= now();

-- name: claim_shards
-- Live shards of the job that nobody holds, whose lease lapsed by the database's clock, or whose holder the engine
-- found dead; rows another worker is claiming right now are skipped. Never the owner's own: its tasks drive
-- those, and its lease keeper renews them. Every claim is a new fencing token.
UPDATE shards SET lease_owner = %(owner)s, lease_expires = now() + make_interval(secs => %(seconds)s),
                  lease_token = lease_token + 1
WHERE id IN (
    SELECT id FROM shards
    WHERE job_id = %(job_id)s AND phase NOT IN ('ingested', 'abandoned')
      AND (lease_owner IS NULL
           OR (lease_owner != %(owner)s AND (lease_expires < now() OR lease_owner = ANY(%(take_over)b::text[]))))
    ORDER BY id
    FOR UPDATE SKIP LOCKED)
RETURNING id, lease_token;

-- name: renew_lease
UPDATE shards SET lease_expires = now() + make_interval(secs => %(seconds)s)
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s;

-- name: renew_leases
UPDATE shards SET lease_expires = now() + make_interval(secs => %(seconds)s)
WHERE lease_owner = %(owner)s AND phase NOT IN ('ingested', 'abandoned');

-- name: release_lease
UPDATE shards SET lease_owner = NULL, lease_expires = NULL
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s;

-- name: get_shard
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards WHERE id = %(shard_id)s;

-- name: job_shards
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards WHERE job_id = %(job_id)s ORDER BY id;

-- name: last_failed_with
-- The newest shard of the job whose batch failed, or that the provider refused, with one of the error codes.
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards
WHERE job_id = %(job_id)s AND (batch_status = 'failed' OR phase = 'abandoned')
  AND EXISTS (SELECT 1 FROM jsonb_array_elements(errors::jsonb) e WHERE e->>'code' = ANY(%(codes)b::text[]))
ORDER BY id DESC LIMIT 1;

-- name: spool_rows
SELECT m.wire_id, r.url, r.body FROM shard_members m JOIN requests r ON r.rid = m.rid
WHERE m.shard_id = %(shard_id)s AND m.wire_id > %(after)s ORDER BY m.wire_id LIMIT %(limit)s;

-- name: shard_uploaded
UPDATE shards SET phase = 'uploaded', file_id = %(file_id)s, last_error = NULL
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'planned';

-- name: shard_creating
UPDATE shards SET phase = 'creating', creating_at = extract(epoch FROM now())
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'uploaded'
RETURNING creating_at;

-- name: shard_reupload
UPDATE shards SET phase = 'planned', file_id = NULL, last_error = %(reason)s
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s
  AND phase IN ('uploaded', 'creating');

-- name: shard_submitted
UPDATE shards SET phase = 'submitted', batch_id = %(batch_id)s, batch_status = %(status)s,
                  provider_counts = %(counts)s, errors = %(errors)s, provider_created_at = %(created_at)s,
                  last_error = NULL
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'creating';

-- name: shard_rebind
UPDATE shards SET batch_id = %(batch_id)s, batch_status = %(status)s, provider_counts = %(counts)s,
                  errors = %(errors)s, provider_created_at = %(created_at)s
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'submitted';

-- name: recorded_batch_ids
SELECT batch_id FROM shards WHERE batch_id IS NOT NULL AND created_at >= %(since)s;

-- name: shard_polled
UPDATE shards SET batch_status = %(status)s, provider_counts = %(counts)s, errors = %(errors)s,
                  output_file_id = %(output_file_id)s, error_file_id = %(error_file_id)s, last_error = NULL
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'submitted';

-- name: shard_ended
UPDATE shards SET phase = 'ended', ended_at = extract(epoch FROM now())
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'submitted';

-- name: shard_note
UPDATE shards SET last_error = %(error)s
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s;

-- name: shard_ingested
UPDATE shards SET phase = 'ingested', lease_owner = NULL, lease_expires = NULL, last_error = NULL
WHERE id = %(shard_id)s AND lease_owner = %(owner)s AND lease_token = %(token)s AND phase = 'ended';

-- name: shard_abandoned
-- owner and token: the lease it is abandoned under; NULL for a job's cancel, which only abandons shards not yet
-- created.
UPDATE shards SET phase = 'abandoned', errors = %(errors)s, lease_owner = NULL, lease_expires = NULL
WHERE id = %(shard_id)s AND phase NOT IN ('ingested', 'abandoned')
  AND ((%(owner)s::text IS NULL AND phase IN ('planned', 'uploaded'))
       OR (lease_owner = %(owner)s AND lease_token = %(token)s));

-- name: member_requests
SELECT wire_id, rid, attempt FROM shard_members WHERE shard_id = %(shard_id)s;

-- name: member_requests_of
SELECT wire_id, rid, attempt FROM shard_members WHERE shard_id = %(shard_id)s AND wire_id = ANY(%(wire_ids)b::text[]);

-- name: create_staged_results
-- A chunk of results arrives here by COPY (one per session; emptied by every commit), then goes into results.
CREATE TEMPORARY TABLE staged_results (
    rid bigint, attempt integer, shard_id bigint, outcome text, status_code integer, body bytea, error_code text,
    error_message text, input_tokens bigint, output_tokens bigint, cached_tokens bigint, model text,
    request_id text, line_id text
) ON COMMIT DELETE ROWS;

-- name: copy_staged_results
COPY staged_results (rid, attempt, shard_id, outcome, status_code, body, error_code, error_message, input_tokens,
                     output_tokens, cached_tokens, model, request_id, line_id) FROM STDIN (FORMAT BINARY);

-- name: upsert_staged_results
INSERT INTO results (rid, attempt, shard_id, outcome, status_code, body, error_code, error_message,
                     input_tokens, output_tokens, cached_tokens, model, request_id, line_id)
SELECT rid, attempt, shard_id, outcome, status_code, body, error_code, error_message, input_tokens, output_tokens,
       cached_tokens, model, request_id, line_id
FROM staged_results
ON CONFLICT (rid, attempt) DO UPDATE SET
    shard_id = excluded.shard_id, outcome = excluded.outcome, status_code = excluded.status_code,
    body = excluded.body, error_code = excluded.error_code, error_message = excluded.error_message,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    cached_tokens = excluded.cached_tokens, model = excluded.model, request_id = excluded.request_id,
    line_id = excluded.line_id;

-- name: settle_requests
-- Requests a chunk ends that did not succeed (those are settled once per shard, by settle_succeeded).
UPDATE requests r SET state = u.state, error_code = u.error_code, error_message = u.error_message
FROM unnest(%(rid)b::bigint[], %(state)b::text[], %(error_code)b::text[], %(error_message)b::text[])
     AS u(rid, state, error_code, error_message)
WHERE r.rid = u.rid AND r.shard_id = %(shard_id)s AND r.state = 'in_flight';

-- name: settle_succeeded
UPDATE requests SET state = 'succeeded', error_code = NULL, error_message = NULL
WHERE rid = ANY(%(rids)b::bigint[]) AND shard_id = %(shard_id)s AND state = 'in_flight';

-- name: shard_tally
SELECT
  COALESCE(SUM((r.attempts = m.attempt AND r.state = 'succeeded')::integer), 0),
  COALESCE(SUM((r.attempts = m.attempt AND r.state IN ('failed', 'cancelled'))::integer), 0),
  COALESCE(SUM((r.attempts > m.attempt OR r.state IN ('pending', 'in_flight'))::integer), 0)
FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE m.shard_id = %(shard_id)s;

-- name: upsert_orphans
INSERT INTO orphan_results (shard_id, wire_id, line)
SELECT %(shard_id)s, u.wire_id, u.line FROM unnest(%(wire_ids)b::text[], %(lines)b::bytea[]) AS u(wire_id, line)
ON CONFLICT (shard_id, wire_id) DO UPDATE SET line = excluded.line;

-- name: cancel_shard_members
UPDATE requests SET state = %(state)s, error_code = %(error_code)s, error_message = %(error_message)s
WHERE job_id = (SELECT job_id FROM shards WHERE id = %(shard_id)s) AND shard_id = %(shard_id)s
  AND state = 'in_flight';

-- name: refund_shard_members
-- A try that does not count (the provider's queue was full, nothing ran): the attempt is given back.
UPDATE requests SET state = 'pending', attempts = attempts - 1, error_code = %(error_code)s,
                    error_message = %(error_message)s
WHERE job_id = (SELECT job_id FROM shards WHERE id = %(shard_id)s) AND shard_id = %(shard_id)s
  AND state = 'in_flight';

-- name: requeue_shard_members
UPDATE requests SET state = CASE WHEN attempts < %(max_attempts)s THEN 'pending' ELSE 'failed' END,
                    error_code = %(error_code)s, error_message = %(error_message)s
WHERE job_id = (SELECT job_id FROM shards WHERE id = %(shard_id)s) AND shard_id = %(shard_id)s
  AND state = 'in_flight';

-- name: live_work
SELECT
  EXISTS (SELECT 1 FROM requests WHERE job_id = %(job_id)s AND state IN ('pending', 'in_flight')),
  EXISTS (SELECT 1 FROM shards WHERE job_id = %(job_id)s AND phase NOT IN ('ingested', 'abandoned'));

-- name: walk_in_key_order
SET LOCAL enable_bitmapscan = off; SET LOCAL enable_sort = off;

-- name: final_results
SELECT r.rid, r.custom_id, r.state, r.attempts, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id, r.route
FROM requests r
LEFT JOIN results s ON s.rid = r.rid AND s.attempt = r.attempts
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.rid > GREATEST(%(after)s, (SELECT first_rid - 1 FROM jobs WHERE id = %(job_id)s))
  AND r.rid <= (SELECT last_rid FROM jobs WHERE id = %(job_id)s)
  AND r.job_id = %(job_id)s AND r.state IN ('succeeded', 'failed', 'cancelled') AND (%(all)s OR NOT r.consumed)
ORDER BY r.rid LIMIT %(limit)s;

-- name: all_attempt_results
SELECT r.rid, r.custom_id, r.state, s.attempt, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id, r.route
FROM requests r
JOIN results s ON s.rid = r.rid
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.rid >= GREATEST(%(after_rid)s, (SELECT first_rid FROM jobs WHERE id = %(job_id)s))
  AND r.rid <= (SELECT last_rid FROM jobs WHERE id = %(job_id)s)
  AND r.job_id = %(job_id)s AND (r.rid, s.attempt) > (%(after_rid)s, %(after_attempt)s)
ORDER BY r.rid, s.attempt LIMIT %(limit)s;

-- name: orphans
SELECT o.shard_id, o.wire_id, o.line FROM orphan_results o JOIN shards s ON s.id = o.shard_id
WHERE s.job_id = %(job_id)s ORDER BY o.shard_id, o.wire_id;

-- name: acknowledge
UPDATE requests SET consumed = true WHERE job_id = %(job_id)s AND custom_id = ANY(%(custom_ids)b::text[]);

-- name: audit_requests
SELECT custom_id, state, attempts FROM requests WHERE job_id = %(job_id)s;

-- name: audit_wire_ids
SELECT r.custom_id, m.wire_id FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE r.job_id = %(job_id)s;

-- name: audit_successes
SELECT r.custom_id, s.attempt FROM results s JOIN requests r ON r.rid = s.rid
WHERE r.job_id = %(job_id)s AND s.outcome = 'succeeded';

-- name: audit_tokens
SELECT token FROM shards WHERE job_id = %(job_id)s;

-- name: integrity
-- What must hold whatever the workers did: each a count of rows that break it.
SELECT
  (SELECT count(*) FROM requests r WHERE r.state = 'in_flight'
     AND NOT EXISTS (SELECT 1 FROM shards s WHERE s.id = r.shard_id AND s.phase NOT IN ('ingested', 'abandoned'))),
  (SELECT count(*) FROM shard_members m WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.rid = m.rid)),
  (SELECT count(*) FROM results s WHERE NOT EXISTS (SELECT 1 FROM requests r WHERE r.rid = s.rid)),
  (SELECT count(*) FROM requests r WHERE r.state = 'succeeded'
     AND NOT EXISTS (SELECT 1 FROM results s WHERE s.rid = r.rid AND s.attempt = r.attempts));

-- name: stats_jobs
SELECT status, count(*) FROM jobs GROUP BY status;

-- name: stats_shards
SELECT phase, count(*) FROM shards GROUP BY phase;

-- name: stats_batches
SELECT batch_status, count(*) FROM shards WHERE phase IN ('submitted', 'ended') AND batch_status IS NOT NULL
GROUP BY batch_status;

-- name: stats_requests
SELECT
  (SELECT count(*) FROM requests WHERE state = 'pending'),
  (SELECT count(*) FROM requests WHERE state = 'in_flight'),
  (SELECT count(*) FROM requests WHERE state = 'failed'),
  (SELECT count(*) FROM requests WHERE state = 'cancelled'),
  (SELECT count(*) FROM requests);

-- name: restart_ids
-- After a copy brought rows with their ids: new rows are numbered after the highest.
SELECT setval(pg_get_serial_sequence('requests', 'rid'), COALESCE((SELECT max(rid) FROM requests), 0) + 1, false),
       setval(pg_get_serial_sequence('shards', 'id'), COALESCE((SELECT max(id) FROM shards), 0) + 1, false),
       setval(pg_get_serial_sequence('gateway_files', 'seq'),
              COALESCE((SELECT max(seq) FROM gateway_files), 0) + 1, false),
       setval(pg_get_serial_sequence('gateway_batches', 'seq'),
              COALESCE((SELECT max(seq) FROM gateway_batches), 0) + 1, false);

-- name: derive_job_ranges
-- After a copy: what complete_job would have recorded of each job.
UPDATE jobs SET request_count = r.n, first_rid = r.lo, last_rid = r.hi
FROM (SELECT job_id, count(*) AS n, min(rid) AS lo, max(rid) AS hi FROM requests GROUP BY job_id) r
WHERE jobs.id = r.job_id;

-- Named queries of the batch gateway's tables (see schema.sql). Every read of a client's object names its
-- owner: another tenant's id finds nothing, exactly like an unknown one. Parameters are named (%(name)s).

-- name: add_key
INSERT INTO gateway_keys (token, owner, team_id, models, max_budget, metadata, created_at)
VALUES (%(token)s, %(owner)s, %(team_id)s, %(models)s, %(max_budget)s, %(metadata)s, %(created_at)s);

-- name: get_key
SELECT token, owner, team_id, models, max_budget, metadata, created_at FROM gateway_keys WHERE token = %(token)s;

-- name: delete_keys
DELETE FROM gateway_keys WHERE token = ANY(%(tokens)s::text[]) RETURNING token;

-- name: key_usage
SELECT count(*), COALESCE(sum(input_tokens), 0), COALESCE(sum(output_tokens), 0), COALESCE(sum(cached_tokens), 0),
       COALESCE(sum(cost), 0)
FROM gateway_spend WHERE key_token = %(key)s;

-- name: batch_usage
SELECT count(*), COALESCE(sum(input_tokens), 0), COALESCE(sum(output_tokens), 0), COALESCE(sum(cached_tokens), 0),
       COALESCE(sum(cost), 0)
FROM gateway_spend WHERE batch_id = %(key)s;

-- name: set_prices
INSERT INTO gateway_prices (route, input, cached_input, output)
SELECT * FROM unnest(%(routes)s::text[], %(inputs)s::double precision[], %(cached)s::double precision[],
                     %(outputs)s::double precision[])
ON CONFLICT (route) DO UPDATE SET input = excluded.input, cached_input = excluded.cached_input,
                                  output = excluded.output;

-- name: add_file
INSERT INTO gateway_files (id, owner, purpose, filename, bytes, lines, status, created_at, batch_id, kind)
VALUES (%(id)s, %(owner)s, %(purpose)s, %(filename)s, %(bytes)s, %(lines)s, %(status)s, %(created_at)s,
        %(batch_id)s, %(kind)s);

-- name: add_file_chunk
INSERT INTO gateway_file_chunks (file_id, seq, data) VALUES (%(file_id)s, %(seq)s, %(data)s);

-- name: file_uploaded
UPDATE gateway_files SET status = 'processed', bytes = %(bytes)s, lines = %(lines)s
WHERE id = %(file_id)s AND status = 'uploading';

-- name: get_file
SELECT id, owner, purpose, filename, created_at, bytes, lines, status, batch_id, kind FROM gateway_files
WHERE id = %(file_id)s AND owner = %(owner)s AND status = 'processed';

-- name: list_files
-- newest: newest first (OpenAI's default), else oldest first; after: a file id of the owner (NULL: from the
-- start). An `after` that is not the owner's matches no row, so the page is empty.
SELECT id, owner, purpose, filename, created_at, bytes, lines, status, batch_id, kind FROM gateway_files
WHERE owner = %(owner)s AND status = 'processed' AND (%(purpose)s::text IS NULL OR purpose = %(purpose)s)
  AND (%(after)s::text IS NULL
       OR (%(newest)s AND seq < (SELECT seq FROM gateway_files WHERE id = %(after)s AND owner = %(owner)s))
       OR (NOT %(newest)s AND seq > (SELECT seq FROM gateway_files WHERE id = %(after)s AND owner = %(owner)s)))
ORDER BY CASE WHEN %(newest)s THEN -seq ELSE seq END LIMIT %(limit)s;

-- name: file_chunks
SELECT seq, data FROM gateway_file_chunks WHERE file_id = %(file_id)s AND seq > %(after)s ORDER BY seq
LIMIT %(limit)s;

-- name: delete_file
DELETE FROM gateway_files WHERE id = %(file_id)s AND owner = %(owner)s AND status = 'processed';

-- name: delete_chunks
DELETE FROM gateway_file_chunks WHERE file_id = %(file_id)s;

-- name: stale_uploads
SELECT id FROM gateway_files WHERE status = 'uploading' AND created_at < %(before)s;

-- name: delete_upload
DELETE FROM gateway_files WHERE id = %(file_id)s AND status = 'uploading';

-- name: add_batch
INSERT INTO gateway_batches (id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id,
                             status, errors, created_at)
VALUES (%(id)s, %(owner)s, %(key_token)s, %(input_file_id)s, %(endpoint)s, %(completion_window)s, %(metadata)s,
        %(job_id)s, %(status)s, %(errors)s, %(created_at)s);

-- name: get_batch
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches WHERE id = %(batch_id)s AND owner = %(owner)s;

-- name: list_batches
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches
WHERE owner = %(owner)s
  AND (%(after)s::text IS NULL
       OR seq < (SELECT seq FROM gateway_batches WHERE id = %(after)s AND owner = %(owner)s))
ORDER BY seq DESC LIMIT %(limit)s;

-- name: validating_batches
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches WHERE status = 'validating' ORDER BY seq;

-- name: batch_submitted
UPDATE gateway_batches SET status = 'submitted' WHERE id = %(batch_id)s AND status = 'validating';

-- name: batch_failed
UPDATE gateway_batches SET status = 'failed', errors = %(errors)s, ended_at = %(at)s
WHERE id = %(batch_id)s AND status = 'validating';

-- name: batch_cancelling
UPDATE gateway_batches SET cancelling_at = COALESCE(cancelling_at, %(at)s) WHERE id = %(batch_id)s;

-- name: batch_ended
-- Only once: of two processes that see the job end, the second changes nothing (and adds no files).
UPDATE gateway_batches SET status = %(status)s, ended_at = %(ended_at)s, output_file_id = %(output_file_id)s,
                           error_file_id = %(error_file_id)s, total = %(total)s, completed = %(completed)s,
                           failed = %(failed)s
WHERE id = %(id)s AND status = 'submitted';

-- name: batch_of_shard
-- The gateway batch whose job a shard belongs to (none for the jobs of the library and the CLI).
SELECT b.id, b.key_token FROM shards s JOIN gateway_batches b ON b.job_id = s.job_id WHERE s.id = %(shard_id)s;

-- name: book_spend
-- The usage and cost of the successes among a chunk's results, at the prices of their routes; in the ingest's
-- transaction, once per (request, attempt) however often the chunk is ingested.
INSERT INTO gateway_spend (rid, attempt, batch_id, key_token, input_tokens, output_tokens, cached_tokens, cost)
SELECT s.rid, s.attempt, %(batch_id)s, %(key_token)s, COALESCE(s.input_tokens, 0), COALESCE(s.output_tokens, 0),
       COALESCE(s.cached_tokens, 0),
       (COALESCE(s.input_tokens, 0) - COALESCE(s.cached_tokens, 0)) * p.input
         + COALESCE(s.cached_tokens, 0) * p.cached_input + COALESCE(s.output_tokens, 0) * p.output
FROM results s JOIN requests r ON r.rid = s.rid LEFT JOIN gateway_prices p ON p.route = r.route
WHERE s.rid = ANY(%(rids)b::bigint[]) AND s.shard_id = %(shard_id)s AND s.outcome = 'succeeded'
ON CONFLICT (rid, attempt) DO NOTHING;

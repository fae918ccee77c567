-- Named queries of the batch gateway's tables (see schema.sql). Every read of a client's object names its
-- owner: another tenant's id finds nothing, exactly like an unknown one.

-- name: add_key
INSERT INTO gateway_keys (token, owner, team_id, models, max_budget, metadata, created_at)
VALUES (:token, :owner, :team_id, :models, :max_budget, :metadata, :created_at);

-- name: get_key
SELECT token, owner, team_id, models, max_budget, metadata, created_at FROM gateway_keys WHERE token = ?;

-- name: delete_key
DELETE FROM gateway_keys WHERE token = ?;

-- name: key_usage
SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0),
       COALESCE(SUM(cost), 0)
FROM gateway_spend WHERE key_token = ?;

-- name: batch_usage
SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cached_tokens), 0),
       COALESCE(SUM(cost), 0)
FROM gateway_spend WHERE batch_id = ?;

-- name: set_price
INSERT INTO gateway_prices (route, input, cached_input, output) VALUES (?, ?, ?, ?)
ON CONFLICT (route) DO UPDATE SET input = excluded.input, cached_input = excluded.cached_input,
                                  output = excluded.output;

-- name: add_file
INSERT INTO gateway_files (id, owner, purpose, filename, bytes, lines, status, created_at, batch_id, kind)
VALUES (:id, :owner, :purpose, :filename, :bytes, :lines, :status, :created_at, :batch_id, :kind);

-- name: add_file_chunk
INSERT INTO gateway_file_chunks (file_id, seq, data) VALUES (?, ?, ?);

-- name: file_uploaded
UPDATE gateway_files SET status = 'processed', bytes = ?, lines = ? WHERE id = ? AND status = 'uploading';

-- name: get_file
SELECT id, owner, purpose, filename, created_at, bytes, lines, status, batch_id, kind FROM gateway_files
WHERE id = ? AND owner = ? AND status = 'processed';

-- name: list_files
-- :newest 1 lists newest first (OpenAI's default), 0 oldest first; :after a file id of the owner (NULL: from
-- the start). An `after` that is not the owner's matches no row, so the page is empty.
WITH cursor AS (SELECT seq FROM gateway_files WHERE id = :after AND owner = :owner)
SELECT id, owner, purpose, filename, created_at, bytes, lines, status, batch_id, kind FROM gateway_files
WHERE owner = :owner AND status = 'processed' AND (:purpose IS NULL OR purpose = :purpose)
  AND (:after IS NULL OR (:newest AND seq < (SELECT seq FROM cursor))
       OR (NOT :newest AND seq > (SELECT seq FROM cursor)))
ORDER BY CASE WHEN :newest THEN -seq ELSE seq END LIMIT :limit;

-- name: file_chunks
SELECT seq, data FROM gateway_file_chunks WHERE file_id = ? AND seq > ? ORDER BY seq LIMIT ?;

-- name: delete_file
DELETE FROM gateway_files WHERE id = ? AND owner = ? AND status = 'processed';

-- name: delete_chunks
DELETE FROM gateway_file_chunks WHERE file_id = ?;

-- name: stale_uploads
SELECT id FROM gateway_files WHERE status = 'uploading' AND created_at < ?;

-- name: delete_upload
DELETE FROM gateway_files WHERE id = ? AND status = 'uploading';

-- name: add_batch
INSERT INTO gateway_batches (id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id,
                             status, errors, created_at)
VALUES (:id, :owner, :key_token, :input_file_id, :endpoint, :completion_window, :metadata, :job_id, :status,
        :errors, :created_at);

-- name: get_batch
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches WHERE id = ? AND owner = ?;

-- name: list_batches
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches
WHERE owner = :owner AND (:after IS NULL OR seq < (SELECT seq FROM gateway_batches WHERE id = :after AND owner = :owner))
ORDER BY seq DESC LIMIT :limit;

-- name: validating_batches
SELECT id, owner, key_token, input_file_id, endpoint, completion_window, metadata, job_id, status, errors,
       created_at, cancelling_at, ended_at, output_file_id, error_file_id, total, completed, failed
FROM gateway_batches WHERE status = 'validating' ORDER BY seq;

-- name: batch_submitted
UPDATE gateway_batches SET status = 'submitted' WHERE id = ? AND status = 'validating';

-- name: batch_failed
UPDATE gateway_batches SET status = 'failed', errors = ?, ended_at = ? WHERE id = ? AND status = 'validating';

-- name: batch_cancelling
UPDATE gateway_batches SET cancelling_at = COALESCE(cancelling_at, ?) WHERE id = ?;

-- name: batch_ended
-- Only once: of two processes that see the job end, the second changes nothing (and adds no files).
UPDATE gateway_batches SET status = :status, ended_at = :ended_at, output_file_id = :output_file_id,
                           error_file_id = :error_file_id, total = :total, completed = :completed, failed = :failed
WHERE id = :id AND status = 'submitted';

-- name: batch_of_shard
-- The gateway batch whose job a shard belongs to (none for the jobs of the library and the CLI).
SELECT b.id, b.key_token FROM shards s JOIN gateway_batches b ON b.job_id = s.job_id WHERE s.id = ?;

-- name: book_spend
-- The usage and cost of the successes among a chunk's results (:rids, a JSON array), at the prices of their
-- routes; in the ingest's transaction, once per (request, attempt) however often the chunk is ingested.
INSERT OR IGNORE INTO gateway_spend (rid, attempt, batch_id, key_token, input_tokens, output_tokens, cached_tokens,
                                     cost)
SELECT s.rid, s.attempt, :batch_id, :key_token, COALESCE(s.input_tokens, 0), COALESCE(s.output_tokens, 0),
       COALESCE(s.cached_tokens, 0),
       (COALESCE(s.input_tokens, 0) - COALESCE(s.cached_tokens, 0)) * p.input
         + COALESCE(s.cached_tokens, 0) * p.cached_input + COALESCE(s.output_tokens, 0) * p.output
FROM results s JOIN requests r ON r.rid = s.rid LEFT JOIN gateway_prices p ON p.route = r.route
WHERE s.rid IN (SELECT value FROM json_each(:rids)) AND s.shard_id = :shard_id AND s.outcome = 'succeeded';

-- Answers: how the trail is sealed: the last seal and its age, seals in the period and the
-- interval between them (median and longest), and the records still waiting for a seal with
-- the time of the oldest (signed exports live outside the database and are not seen here).
-- Parameters: %(from)s, %(to)s (timestamptz; the period is from <= time < to).
-- Section: 2 Audit controls.
WITH seals AS (
    SELECT id, at, elements, at - lag(at) OVER (ORDER BY id) AS gap
      FROM audit.checkpoints
     WHERE kind = 'seal'
), period AS (
    SELECT count(*) AS seals, coalesce(sum(elements), 0) AS elements_sealed,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM gap)) AS median_gap_s,
           max(extract(epoch FROM gap)) AS longest_gap_s
      FROM seals
     WHERE at >= %(from)s AND at < %(to)s
), last_seal AS (
    SELECT id, at, elements FROM seals ORDER BY id DESC LIMIT 1
), waiting AS (
    SELECT coalesce(sum(coalesce(q.last_seq, q.seq) - q.seq + 1), 0) AS unsealed,
           min(q.at) AS oldest_unsealed_at
      FROM audit.seal_queue q
)
SELECT period.*, last_seal.id AS last_seal_id, last_seal.at AS last_seal_at,
       extract(epoch FROM now() - last_seal.at) AS last_seal_age_s,
       waiting.unsealed, waiting.oldest_unsealed_at,
       (SELECT count(*) FROM audit.checkpoints) AS checkpoints
  FROM period CROSS JOIN waiting LEFT JOIN last_seal ON true;

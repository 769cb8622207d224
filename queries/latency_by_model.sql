-- Latency percentiles by model: calls, errors, exact (nearest-rank) p50/p90/p99
-- latency and p50/p99 time to first token of streamed calls, per requested model.
WITH calls AS (
  SELECT coalesce(request_model, model) AS model, provider, duration_ms, ttft_ms, status,
         row_number() OVER (PARTITION BY coalesce(request_model, model) ORDER BY duration_ms, span_id) AS rn,
         count(*) OVER (PARTITION BY coalesce(request_model, model)) AS n,
         row_number() OVER (PARTITION BY coalesce(request_model, model) ORDER BY ttft_ms NULLS LAST, span_id) AS trn,
         count(ttft_ms) OVER (PARTITION BY coalesce(request_model, model)) AS tn
  FROM llm_calls
  WHERE start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
)
SELECT model,
       max(provider) AS provider,
       max(n) AS calls,
       sum(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors,
       round(min(CASE WHEN rn >= ceil(0.50 * n) THEN duration_ms END), 1) AS p50_ms,
       round(min(CASE WHEN rn >= ceil(0.90 * n) THEN duration_ms END), 1) AS p90_ms,
       round(min(CASE WHEN rn >= ceil(0.99 * n) THEN duration_ms END), 1) AS p99_ms,
       round(min(CASE WHEN tn > 0 AND trn >= ceil(0.50 * tn) AND trn <= tn THEN ttft_ms END), 1) AS ttft_p50_ms,
       round(min(CASE WHEN tn > 0 AND trn >= ceil(0.99 * tn) AND trn <= tn THEN ttft_ms END), 1) AS ttft_p99_ms
FROM calls
GROUP BY model
ORDER BY calls DESC, model

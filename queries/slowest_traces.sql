-- Slowest traces: the 20 longest root spans, with their service, how many LLM
-- calls they made, the LLM time and tokens inside them, and what they cost.
WITH roots AS (
  SELECT trace_id, service_name, span_name, duration_ms, start_time
  FROM spans
  WHERE parent_span_id IS NULL
    AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
), calls AS (
  SELECT trace_id, count(*) AS llm_calls, sum(duration_ms) AS llm_ms,
         sum(input_tokens) + sum(output_tokens) AS tokens, sum(cost_usd) AS cost_usd
  FROM llm_calls
  GROUP BY trace_id
)
SELECT r.trace_id, r.service_name, r.span_name, round(r.duration_ms, 1) AS trace_ms,
       coalesce(c.llm_calls, 0) AS llm_calls, round(c.llm_ms, 1) AS llm_ms, c.tokens,
       round(c.cost_usd, 6) AS cost_usd
FROM roots r LEFT JOIN calls c ON r.trace_id = c.trace_id
ORDER BY r.duration_ms DESC, r.trace_id
LIMIT 20

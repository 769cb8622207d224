-- Error rate by provider and error class: calls per provider, failed calls per
-- normalised error class (rate_limited, server_error, timeout, …) and their share.
WITH per_provider AS (
  SELECT provider, count(*) AS calls
  FROM llm_calls
  WHERE start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
  GROUP BY provider
)
SELECT e.provider,
       e.error_type,
       p.calls,
       count(*) AS errors,
       round(count(*) * 1.0 / p.calls, 4) AS error_rate
FROM llm_calls e
JOIN per_provider p ON e.provider IS NOT DISTINCT FROM p.provider
WHERE e.status = 'error'
  AND e.start_time >= TIMESTAMP '{since}' AND e.start_time < TIMESTAMP '{until}'
  AND e.date BETWEEN '{since_date}' AND '{until_date}'
GROUP BY e.provider, e.error_type, p.calls
ORDER BY errors DESC, e.provider, e.error_type

-- Cost and latency by prompt version, side by side for A/B comparison: per
-- prompt name and version, calls, error rate, mean latency, tokens and cost per call.
SELECT prompt_name,
       prompt_version,
       count(*) AS calls,
       round(avg(CASE WHEN status = 'error' THEN 1.0 ELSE 0.0 END), 4) AS error_rate,
       round(avg(duration_ms), 1) AS mean_latency_ms,
       round(avg(input_tokens), 1) AS mean_input_tokens,
       round(avg(output_tokens), 1) AS mean_output_tokens,
       round(sum(cost_usd) / count(cost_usd), 6) AS cost_per_priced_call_usd
FROM llm_calls
WHERE prompt_name IS NOT NULL
  AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
GROUP BY prompt_name, prompt_version
ORDER BY prompt_name, prompt_version

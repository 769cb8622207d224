-- Unpriced models: model names the price book does not know, by provider,
-- with how many calls and tokens went unpriced. Add them to `pricing.file`.
SELECT provider,
       coalesce(response_model, request_model) AS model,
       count(*) AS calls,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       min(start_time) AS first_seen,
       max(start_time) AS last_seen
FROM llm_calls
WHERE cost_status = 'unpriced'
  AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
GROUP BY provider, coalesce(response_model, request_model)
ORDER BY calls DESC, model

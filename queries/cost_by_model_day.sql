-- Cost by provider, model and day (UTC): calls, input/output tokens, USD, and
-- how many calls could not be priced (their cost is unknown, not zero).
SELECT date,
       provider,
       coalesce(request_model, model) AS model,
       count(*) AS calls,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       round(sum(cost_usd), 6) AS cost_usd,
       sum(CASE WHEN cost_status = 'unpriced' THEN 1 ELSE 0 END) AS unpriced_calls
FROM llm_calls
WHERE start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
GROUP BY date, provider, coalesce(request_model, model)
ORDER BY date, cost_usd DESC NULLS LAST, model

-- Prompt-cache savings in USD, by model: what the calls would have cost without
-- prompt caching minus what they cost with it (cache writes cost more than
-- plain input, so savings can be negative), at today's prices (llm_cost).
SELECT coalesce(request_model, model) AS model,
       count(*) AS calls,
       sum(cache_read_tokens) AS cache_read_tokens,
       sum(cache_write_tokens) AS cache_write_tokens,
       round(sum(llm_cost(model, input_tokens, output_tokens, 0, 0, reasoning_tokens, provider)), 6) AS uncached_usd,
       round(sum(llm_cost(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, provider)), 6) AS cached_usd,
       round(sum(llm_cost(model, input_tokens, output_tokens, 0, 0, reasoning_tokens, provider))
           - sum(llm_cost(model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, provider)), 6) AS savings_usd
FROM llm_calls
WHERE (cache_read_tokens > 0 OR cache_write_tokens > 0)
  AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
GROUP BY coalesce(request_model, model)
ORDER BY savings_usd DESC NULLS LAST, model

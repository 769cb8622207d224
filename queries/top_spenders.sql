-- Top users and sessions by cost: the 10 users and the 10 sessions that spent
-- the most, with calls, tokens and USD.
WITH users AS (
  SELECT 'user' AS kind, user_id AS id, count(*) AS calls,
         sum(input_tokens) + sum(output_tokens) AS tokens, round(sum(cost_usd), 6) AS cost_usd
  FROM llm_calls
  WHERE user_id IS NOT NULL
    AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
  GROUP BY user_id
  ORDER BY cost_usd DESC NULLS LAST, id
  LIMIT 10
), sessions AS (
  SELECT 'session' AS kind, session_id AS id, count(*) AS calls,
         sum(input_tokens) + sum(output_tokens) AS tokens, round(sum(cost_usd), 6) AS cost_usd
  FROM llm_calls
  WHERE session_id IS NOT NULL
    AND start_time >= TIMESTAMP '{since}' AND start_time < TIMESTAMP '{until}'
    AND date BETWEEN '{since_date}' AND '{until_date}'
  GROUP BY session_id
  ORDER BY cost_usd DESC NULLS LAST, id
  LIMIT 10
)
SELECT * FROM users
UNION ALL
SELECT * FROM sessions
ORDER BY kind DESC, cost_usd DESC NULLS LAST, id

-- Of the given pg_catalog function names, those whose every overload is IMMUTABLE: a call of
-- such a function with constant arguments is folded by the planner (it costs nothing per row).
-- Read only for plan's warnings about row filters that call a function once per row.
SELECT p.proname::text
  FROM pg_proc p
 WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname = ANY (%s::text[])
 GROUP BY p.proname
HAVING bool_and(p.provolatile = 'i')

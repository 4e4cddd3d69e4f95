-- Answers: what each group role may do in the live catalog, to check against the policy: the
-- columns of its views it may SELECT, INSERT and UPDATE, whether it may DELETE, which views
-- filter rows, and whether it can read or write any base table of the policy directly.
-- Parameters: %(groups)s (the policy's group names, text[]), %(tables)s (its tables,
-- schema.name, text[]).
-- Section: 4 Access control (drift).
WITH roles AS (
    SELECT r.rolname FROM pg_roles r WHERE r.rolname = ANY (%(groups)s::text[])
)
SELECT 'view' AS object, r.rolname AS group_name, c.relname AS relation, a.attname AS column_name,
       has_column_privilege(r.rolname, c.oid, a.attnum, 'SELECT') AS can_select,
       has_column_privilege(r.rolname, c.oid, a.attnum, 'INSERT') AS can_insert,
       has_column_privilege(r.rolname, c.oid, a.attnum, 'UPDATE') AS can_update,
       has_table_privilege(r.rolname, c.oid, 'DELETE') AS can_delete,
       pg_get_viewdef(c.oid) ~* '\mWHERE\M' AS filtered
  FROM roles r
  JOIN pg_namespace n ON n.nspname = r.rolname
  JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'v'
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'base', r.rolname, t.name, NULL,
       has_table_privilege(r.rolname, to_regclass(t.name), 'SELECT'),
       has_table_privilege(r.rolname, to_regclass(t.name), 'INSERT'),
       has_table_privilege(r.rolname, to_regclass(t.name), 'UPDATE'),
       has_table_privilege(r.rolname, to_regclass(t.name), 'DELETE'),
       NULL
  FROM roles r CROSS JOIN unnest(%(tables)s::text[]) AS t(name)
 WHERE to_regclass(t.name) IS NOT NULL
UNION ALL
SELECT 'column', NULL, t.name, a.attname, NULL, NULL, NULL, NULL, NULL
  FROM unnest(%(tables)s::text[]) AS t(name)
  JOIN pg_attribute a ON a.attrelid = to_regclass(t.name) AND a.attnum > 0
                     AND NOT a.attisdropped
UNION ALL
SELECT 'role', r.rolname, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM roles r
ORDER BY 1, 2, 3, 4;

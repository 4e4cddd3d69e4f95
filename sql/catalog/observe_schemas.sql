SELECT n.nspname, concat_ws(' ', n.nspowner::regrole, n.nspacl::text)
  FROM pg_namespace n WHERE n.nspname = ANY(%s)

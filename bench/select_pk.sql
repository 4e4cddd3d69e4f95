\if :registered = 0
SELECT bench_identity.register_self();
\set registered 1
\endif
\set id random(1, :patients)
SELECT id, birth_date, zip FROM patients WHERE id = :id;

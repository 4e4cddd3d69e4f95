\if :registered = 0
SELECT bench_identity.register_self();
\set registered 1
\endif
\set pid random(0, :clinic1_patients - 1) * 3 + 1
BEGIN;
SELECT p.id, p.full_name, p.birth_date, v.id AS visit_id FROM patients p JOIN visits v ON v.patient_id = p.id WHERE p.id = :pid ORDER BY v.id LIMIT 1 \gset
INSERT INTO claims (patient_id, visit_id, amount, code) VALUES (:pid, :visit_id, 120.00, '99213') RETURNING id AS claim_id \gset
UPDATE claims SET status = 'accepted' WHERE id = :claim_id;
END;

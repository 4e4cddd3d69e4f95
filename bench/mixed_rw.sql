\if :registered = 0
SELECT bench_identity.register_self();
\set registered 1
\endif
\set pid random(0, :clinic2_patients - 1) * 3 + 2
\set seq :seq + 1
\set vid :idbase + :client_id * 10000000 + :seq
BEGIN;
SELECT id, full_name, birth_date, zip FROM patients WHERE id = :pid;
INSERT INTO visits (id, patient_id, clinic_id, visited_at, diagnosis, provider) VALUES (:vid, :pid, 2, now(), 'Z00.00 Encounter for general adult medical examination', 'Dr. Bench');
UPDATE visits SET notes = 'Vitals stable. Follow up in 4 weeks.' WHERE id = :vid;
END;

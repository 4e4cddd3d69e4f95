COPY t TO STDOUT
=> copy_out[copy_out] needs_approval tables=.t
=> clinician: copy_out[copy_out] allowed

COPY patients (id, ssn) TO STDOUT WITH (FORMAT csv)
=> copy_out[copy_out] needs_approval phi=public.patients.ssn
=> clinician: copy_out[copy_out] masked phi=public.patients.ssn

COPY visits TO STDOUT
=> clinician: copy_out[copy_out] allowed phi=public.visits.diagnosis,public.visits.notes

COPY (SELECT id, full_name FROM patients WHERE clinic_id = 3) TO STDOUT
=> copy_out[copy_out] needs_approval phi=public.patients.full_name

COPY (DELETE FROM t RETURNING *) TO STDOUT
=> copy_out[copy_out,delete_all] needs_approval

copy t from stdin
=> copy_in[copy_in] allowed tables=.t phi=
=> research: copy_in[copy_in] needs_approval

COPY claims (patient_id, amount) FROM STDIN WITH (FORMAT binary)
=> copy_in[copy_in] allowed

copy t to program 'x'
=> copy_out[copy_out,copy_program] blocked

COPY t FROM PROGRAM 'curl http://example.invalid'
=> copy_in[copy_in,copy_program] blocked

COPY t TO '/tmp/out.csv'
=> copy_out[copy_out,file_access] blocked

COPY t FROM '/etc/passwd'
=> copy_in[copy_in,file_access] blocked

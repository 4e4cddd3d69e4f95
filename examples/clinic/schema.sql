-- The clinic example schema: a small outpatient practice.
--
-- Runs once on an empty database (no IF NOT EXISTS: a second run is an error on purpose, so a
-- half-loaded database is never mistaken for a fresh one).  Every table lives in schema public;
-- examples/clinic/policy.yaml refers to them as public.<table>.

CREATE TABLE public.clinics (
    id   int  PRIMARY KEY,
    name text NOT NULL,
    zip  text
);

CREATE TABLE public.patients (
    id         int         PRIMARY KEY,
    clinic_id  int         NOT NULL REFERENCES public.clinics (id),
    full_name  text        NOT NULL,
    ssn        text        NOT NULL,
    birth_date date        NOT NULL,
    zip        text,
    email      text,
    phone      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- what visits reference: a visit's clinic is always its patient's clinic
    UNIQUE (id, clinic_id)
);

CREATE TABLE public.visits (
    id         bigint      PRIMARY KEY,
    patient_id int         NOT NULL,
    clinic_id  int         NOT NULL,
    visited_at timestamptz NOT NULL,
    diagnosis  text,
    notes      text,
    provider   text,
    -- the tenant is part of the reference: a row filter on clinic_id then confines patient_id
    -- too, and the key's error can only name the writer's own clinic (docs/leaks.md)
    FOREIGN KEY (patient_id, clinic_id) REFERENCES public.patients (id, clinic_id)
);

CREATE TABLE public.claims (
    id         bigserial     PRIMARY KEY,
    patient_id int           NOT NULL REFERENCES public.patients (id),
    visit_id   bigint        REFERENCES public.visits (id),
    amount     numeric(10,2) NOT NULL,
    code       text          NOT NULL,
    status     text          NOT NULL DEFAULT 'submitted',
    created_at timestamptz   NOT NULL DEFAULT now()
);

CREATE TABLE public.notes (
    id         bigint      PRIMARY KEY,
    patient_id int         NOT NULL REFERENCES public.patients (id),
    author     text        NOT NULL,
    written_at timestamptz NOT NULL,
    body       text        NOT NULL
);

-- Row filters select by clinic and joins go through patient_id: index both.
CREATE INDEX patients_clinic_id_idx ON public.patients (clinic_id);
CREATE INDEX visits_patient_id_idx  ON public.visits (patient_id);
CREATE INDEX visits_clinic_id_idx   ON public.visits (clinic_id);
CREATE INDEX claims_patient_id_idx  ON public.claims (patient_id);
CREATE INDEX notes_patient_id_idx   ON public.notes (patient_id);

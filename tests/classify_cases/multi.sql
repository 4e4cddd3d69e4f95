# several statements in one string: one spec per statement
select 1;
=> select[] allowed

select 1;    
=> select[] allowed

SELECT 1; SELECT ssn FROM patients; SET ROLE admin
=> select[] allowed | select[] masked | role[role_change,set_config] blocked

BEGIN; DELETE FROM claims; COMMIT;
=> transaction[] allowed | delete[delete_all] needs_approval | transaction[] allowed

-- a leading comment
/* and a block comment; with a semicolon */ SELECT 'ünïcødé; 日本語' AS "naïve" -- trailing; comment
;
SELECT pg_sleep(0) /* ; */ ; SELECT 'Ω'
=> select[] allowed | select[sleep] blocked | select[] allowed

SELECT E'it''s; fine', $tag$ ; DROP TABLE x; $tag$
=> select[] allowed

;;;
=> none

   
=> none

-- only a comment
=> none

selec 1
=> error 42601

SELECT 1; SELEC 2
=> error 42601

SELECT 'unterminated
=> error 42601

-- runtime-role:policyc_owner
CREATE ROLE "policyc_owner" NOLOGIN INHERIT;
GRANT pg_read_all_stats TO "policyc_owner";

-- runtime-role:policyc_auditor
CREATE ROLE "policyc_auditor" NOLOGIN NOINHERIT;

-- runtime-role:policyc_proxy
CREATE ROLE "policyc_proxy" LOGIN INHERIT;

-- role:billing
CREATE ROLE "billing" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1;
ALTER ROLE "billing" SET search_path = "billing";
ALTER ROLE "billing" SET track_activities = off;
COMMENT ON ROLE "billing" IS 'policyc group billing of database clinic';
SELECT policyc._copy_credential('billing', 'policyc_proxy');

-- role:research
CREATE ROLE "research" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1;
ALTER ROLE "research" SET search_path = "research";
ALTER ROLE "research" SET track_activities = off;
COMMENT ON ROLE "research" IS 'policyc group research of database clinic';
SELECT policyc._copy_credential('research', 'policyc_proxy');

-- role:clinician
CREATE ROLE "clinician" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1;
ALTER ROLE "clinician" SET search_path = "clinician";
ALTER ROLE "clinician" SET track_activities = off;
COMMENT ON ROLE "clinician" IS 'policyc group clinician of database clinic';
SELECT policyc._copy_credential('clinician', 'policyc_proxy');

-- schema:billing
CREATE SCHEMA "billing" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "billing" FROM PUBLIC;
GRANT USAGE ON SCHEMA "billing" TO "billing";
GRANT USAGE ON SCHEMA policyc TO "billing";

-- schema:research
CREATE SCHEMA "research" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "research" FROM PUBLIC;
GRANT USAGE ON SCHEMA "research" TO "research";
GRANT USAGE ON SCHEMA policyc TO "research";

-- schema:clinician
CREATE SCHEMA "clinician" AUTHORIZATION policyc_owner;
REVOKE ALL ON SCHEMA "clinician" FROM PUBLIC;
GRANT USAGE ON SCHEMA "clinician" TO "clinician";
GRANT USAGE ON SCHEMA policyc TO "clinician";

-- base-grants:public.claims
REVOKE ALL ON "public"."claims" FROM policyc_owner;
GRANT SELECT ON "public"."claims" TO policyc_owner;
GRANT INSERT ("patient_id", "visit_id", "amount", "code") ON "public"."claims" TO policyc_owner;
GRANT UPDATE ("status") ON "public"."claims" TO policyc_owner;

-- base-grants:public.notes
REVOKE ALL ON "public"."notes" FROM policyc_owner;
GRANT SELECT ON "public"."notes" TO policyc_owner;
GRANT INSERT ("id", "patient_id", "author", "written_at", "body") ON "public"."notes" TO policyc_owner;

-- base-grants:public.patients
REVOKE ALL ON "public"."patients" FROM policyc_owner;
GRANT SELECT ON "public"."patients" TO policyc_owner;

-- base-grants:public.visits
REVOKE ALL ON "public"."visits" FROM policyc_owner;
GRANT SELECT ON "public"."visits" TO policyc_owner;
GRANT INSERT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "public"."visits" TO policyc_owner;
GRANT UPDATE ("diagnosis", "notes") ON "public"."visits" TO policyc_owner;

-- view:billing:claims
CREATE VIEW "billing"."claims" WITH (security_barrier = true) AS
SELECT
    "claims"."id" AS "id",
    "claims"."patient_id" AS "patient_id",
    "claims"."visit_id" AS "visit_id",
    "claims"."amount" AS "amount",
    "claims"."code" AS "code",
    "claims"."status" AS "status",
    "claims"."created_at" AS "created_at"
  FROM "public"."claims"
 WHERE EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND claims.patient_id = p.id) AND (visit_id IS NULL OR EXISTS (SELECT 1 FROM public.visits AS v WHERE v.id = claims.visit_id AND v.patient_id = claims.patient_id AND v.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));
ALTER VIEW "billing"."claims" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."claims" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "visit_id", "amount", "code", "status", "created_at") ON "billing"."claims" TO "billing";
GRANT INSERT ("patient_id", "visit_id", "amount", "code") ON "billing"."claims" TO "billing";
GRANT UPDATE ("status") ON "billing"."claims" TO "billing";
GRANT USAGE ON SEQUENCE "public"."claims_id_seq" TO "billing";
COMMENT ON VIEW "billing"."claims" IS 'policyc: public.claims as group billing sees it (masked, filtered)';

-- view:billing:patients
CREATE VIEW "billing"."patients" WITH (security_barrier = true) AS
SELECT
    "patients"."id" AS "id",
    "patients"."clinic_id" AS "clinic_id",
    CASE WHEN ("patients"."full_name")::text ~ '^[A-Za-z]+ [A-Za-z]+$' THEN pg_catalog.left(("patients"."full_name")::text, 1) || '*** ' || pg_catalog.left(pg_catalog.split_part(("patients"."full_name")::text, ' ', 2), 1) || '***' ELSE pg_catalog.regexp_replace(("patients"."full_name")::text, E'(\\w)\\w*', E'\\1***', 'g') END AS "full_name",
    pg_catalog.encode(pg_catalog.sha256((SELECT k.opad FROM policyc.hmac_key k) || pg_catalog.sha256((SELECT k.ipad FROM policyc.hmac_key k) || pg_catalog.convert_to(("patients"."ssn")::text, 'UTF8'))), 'hex') AS "ssn",
    CAST(pg_catalog.date_trunc('year', CAST("patients"."birth_date" AS timestamp)) AS date) AS "birth_date"
  FROM "public"."patients"
 WHERE clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer));
ALTER VIEW "billing"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "full_name", "ssn", "birth_date") ON "billing"."patients" TO "billing";
COMMENT ON VIEW "billing"."patients" IS 'policyc: public.patients as group billing sees it (masked, filtered)';

-- view:billing:visits
CREATE VIEW "billing"."visits" WITH (security_barrier = true) AS
SELECT
    "visits"."id" AS "id",
    "visits"."patient_id" AS "patient_id",
    "visits"."clinic_id" AS "clinic_id",
    "visits"."visited_at" AS "visited_at"
  FROM "public"."visits"
 WHERE clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer));
ALTER VIEW "billing"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "billing"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "clinic_id", "visited_at") ON "billing"."visits" TO "billing";
COMMENT ON VIEW "billing"."visits" IS 'policyc: public.visits as group billing sees it (masked, filtered)';

-- view:research:patients
CREATE VIEW "research"."patients" WITH (security_barrier = true) AS
SELECT
    "patients"."id" AS "id",
    "patients"."clinic_id" AS "clinic_id",
    CAST(pg_catalog.date_trunc('year', CAST("patients"."birth_date" AS timestamp)) AS date) AS "birth_date",
    CASE WHEN pg_catalog.left(("patients"."zip")::text, 3) = ANY ('{000,001,002,003,004,005,006,007,008,009,010,011,012,013,014,015,016,017,018,019,020,021,022,023,024,025,026,027,028,029,030,031,032,033,034,035,037,038,039,040,041,042,043,044,045,046,047,048,049,050,051,052,053,054,055,056,057,058,060,061,062,064,065,066,067,068,069,070,071,072,073,074,075,076,077,078,079,080,081,082,083,084,085,086,087,088,089,090,091,092,093,094,095,096,097,098,099,100,101,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255,256,257,258,259,260,261,262,263,264,265,266,267,268,269,270,271,272,273,274,275,276,277,278,279,280,281,282,283,284,285,286,287,288,289,290,291,292,293,294,295,296,297,298,299,300,301,302,303,304,305,306,307,308,309,310,311,312,313,314,315,316,317,318,319,320,321,322,323,324,325,326,327,328,329,330,331,332,333,334,335,336,337,338,339,340,341,342,343,344,345,346,347,348,349,350,351,352,353,354,355,356,357,358,359,360,361,362,363,364,365,366,367,368,369,370,371,372,373,374,375,376,377,378,379,380,381,382,383,384,385,386,387,388,389,390,391,392,393,394,395,396,397,398,399,400,401,402,403,404,405,406,407,408,409,410,411,412,413,414,415,416,417,418,419,420,421,422,423,424,425,426,427,428,429,430,431,432,433,434,435,436,437,438,439,440,441,442,443,444,445,446,447,448,449,450,451,452,453,454,455,456,457,458,459,460,461,462,463,464,465,466,467,468,469,470,471,472,473,474,475,476,477,478,479,480,481,482,483,484,485,486,487,488,489,490,491,492,493,494,495,496,497,498,499,500,501,502,503,504,505,506,507,508,509,510,511,512,513,514,515,516,517,518,519,520,521,522,523,524,525,526,527,528,529,530,531,532,533,534,535,536,537,538,539,540,541,542,543,544,545,546,547,548,549,550,551,552,553,554,555,557,558,559,560,561,562,563,564,565,566,567,568,569,570,571,572,573,574,575,576,577,578,579,580,581,582,583,584,585,586,587,588,589,590,591,592,593,594,595,596,597,598,599,600,601,602,603,604,605,606,607,608,609,610,611,612,613,614,615,616,617,618,619,620,621,622,623,624,625,626,627,628,629,630,631,632,633,634,635,636,637,638,639,640,641,642,643,644,645,646,647,648,649,650,651,652,653,654,655,656,657,658,659,660,661,662,663,664,665,666,667,668,669,670,671,672,673,674,675,676,677,678,679,680,681,682,683,684,685,686,687,688,689,690,691,693,694,695,696,697,698,699,700,701,702,703,704,705,706,707,708,709,710,711,712,713,714,715,716,717,718,719,720,721,722,723,724,725,726,727,728,729,730,731,732,733,734,735,736,737,738,739,740,741,742,743,744,745,746,747,748,749,750,751,752,753,754,755,756,757,758,759,760,761,762,763,764,765,766,767,768,769,770,771,772,773,774,775,776,777,778,779,780,781,782,783,784,785,786,787,788,789,791,792,793,794,795,796,797,798,799,800,801,802,803,804,805,806,807,808,809,810,811,812,813,814,815,816,817,818,819,820,822,824,825,826,827,828,829,832,833,834,835,836,837,838,839,840,841,842,843,844,845,846,847,848,849,850,851,852,853,854,855,856,857,858,859,860,861,862,863,864,865,866,867,868,869,870,871,872,873,874,875,876,877,880,881,882,883,885,886,887,888,889,891,892,894,895,896,897,898,899,900,901,902,903,904,905,906,907,908,909,910,911,912,913,914,915,916,917,918,919,920,921,922,923,924,925,926,927,928,929,930,931,932,933,934,935,936,937,938,939,940,941,942,943,944,945,946,947,948,949,950,951,952,953,954,955,956,957,958,959,960,961,962,963,964,965,966,967,968,969,970,971,972,973,974,975,976,977,978,979,980,981,982,983,984,985,986,987,988,989,990,991,992,993,994,995,996,997,998,999}'::text[]) THEN pg_catalog.left(("patients"."zip")::text, 3) WHEN pg_catalog.left(("patients"."zip")::text, 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE CASE WHEN pg_catalog.left(pg_catalog.regexp_replace(("patients"."zip")::text, E'\\D', '', 'g'), 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left(pg_catalog.regexp_replace(("patients"."zip")::text, E'\\D', '', 'g'), 3) END END AS "zip"
  FROM "public"."patients";
ALTER VIEW "research"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "research"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "birth_date", "zip") ON "research"."patients" TO "research";
COMMENT ON VIEW "research"."patients" IS 'policyc: public.patients as group research sees it (masked, filtered)';

-- view:research:visits
CREATE VIEW "research"."visits" WITH (security_barrier = true) AS
SELECT
    "visits"."id" AS "id",
    "visits"."patient_id" AS "patient_id",
    "visits"."visited_at" AS "visited_at",
    CAST(CASE WHEN "visits"."diagnosis" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "diagnosis"
  FROM "public"."visits";
ALTER VIEW "research"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "research"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "visited_at", "diagnosis") ON "research"."visits" TO "research";
COMMENT ON VIEW "research"."visits" IS 'policyc: public.visits as group research sees it (masked, filtered)';

-- view:clinician:notes
CREATE VIEW "clinician"."notes" WITH (security_barrier = true) AS
SELECT
    "notes"."id" AS "id",
    "notes"."patient_id" AS "patient_id",
    "notes"."author" AS "author",
    "notes"."written_at" AS "written_at",
    "notes"."body" AS "body"
  FROM "public"."notes"
 WHERE EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND notes.patient_id = p.id);
ALTER VIEW "clinician"."notes" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."notes" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "author", "written_at", "body") ON "clinician"."notes" TO "clinician";
GRANT INSERT ("id", "patient_id", "author", "written_at", "body") ON "clinician"."notes" TO "clinician";
COMMENT ON VIEW "clinician"."notes" IS 'policyc: public.notes as group clinician sees it (masked, filtered)';

-- view:clinician:patients
CREATE VIEW "clinician"."patients" WITH (security_barrier = true) AS
SELECT
    "patients"."id" AS "id",
    "patients"."clinic_id" AS "clinic_id",
    "patients"."full_name" AS "full_name",
    pg_catalog.encode(pg_catalog.sha256((SELECT k.opad FROM policyc.hmac_key k) || pg_catalog.sha256((SELECT k.ipad FROM policyc.hmac_key k) || pg_catalog.convert_to(("patients"."ssn")::text, 'UTF8'))), 'hex') AS "ssn",
    "patients"."birth_date" AS "birth_date",
    CASE WHEN pg_catalog.left(("patients"."zip")::text, 3) = ANY ('{000,001,002,003,004,005,006,007,008,009,010,011,012,013,014,015,016,017,018,019,020,021,022,023,024,025,026,027,028,029,030,031,032,033,034,035,037,038,039,040,041,042,043,044,045,046,047,048,049,050,051,052,053,054,055,056,057,058,060,061,062,064,065,066,067,068,069,070,071,072,073,074,075,076,077,078,079,080,081,082,083,084,085,086,087,088,089,090,091,092,093,094,095,096,097,098,099,100,101,103,104,105,106,107,108,109,110,111,112,113,114,115,116,117,118,119,120,121,122,123,124,125,126,127,128,129,130,131,132,133,134,135,136,137,138,139,140,141,142,143,144,145,146,147,148,149,150,151,152,153,154,155,156,157,158,159,160,161,162,163,164,165,166,167,168,169,170,171,172,173,174,175,176,177,178,179,180,181,182,183,184,185,186,187,188,189,190,191,192,193,194,195,196,197,198,199,200,201,202,204,205,206,207,208,209,210,211,212,213,214,215,216,217,218,219,220,221,222,223,224,225,226,227,228,229,230,231,232,233,234,235,236,237,238,239,240,241,242,243,244,245,246,247,248,249,250,251,252,253,254,255,256,257,258,259,260,261,262,263,264,265,266,267,268,269,270,271,272,273,274,275,276,277,278,279,280,281,282,283,284,285,286,287,288,289,290,291,292,293,294,295,296,297,298,299,300,301,302,303,304,305,306,307,308,309,310,311,312,313,314,315,316,317,318,319,320,321,322,323,324,325,326,327,328,329,330,331,332,333,334,335,336,337,338,339,340,341,342,343,344,345,346,347,348,349,350,351,352,353,354,355,356,357,358,359,360,361,362,363,364,365,366,367,368,369,370,371,372,373,374,375,376,377,378,379,380,381,382,383,384,385,386,387,388,389,390,391,392,393,394,395,396,397,398,399,400,401,402,403,404,405,406,407,408,409,410,411,412,413,414,415,416,417,418,419,420,421,422,423,424,425,426,427,428,429,430,431,432,433,434,435,436,437,438,439,440,441,442,443,444,445,446,447,448,449,450,451,452,453,454,455,456,457,458,459,460,461,462,463,464,465,466,467,468,469,470,471,472,473,474,475,476,477,478,479,480,481,482,483,484,485,486,487,488,489,490,491,492,493,494,495,496,497,498,499,500,501,502,503,504,505,506,507,508,509,510,511,512,513,514,515,516,517,518,519,520,521,522,523,524,525,526,527,528,529,530,531,532,533,534,535,536,537,538,539,540,541,542,543,544,545,546,547,548,549,550,551,552,553,554,555,557,558,559,560,561,562,563,564,565,566,567,568,569,570,571,572,573,574,575,576,577,578,579,580,581,582,583,584,585,586,587,588,589,590,591,592,593,594,595,596,597,598,599,600,601,602,603,604,605,606,607,608,609,610,611,612,613,614,615,616,617,618,619,620,621,622,623,624,625,626,627,628,629,630,631,632,633,634,635,636,637,638,639,640,641,642,643,644,645,646,647,648,649,650,651,652,653,654,655,656,657,658,659,660,661,662,663,664,665,666,667,668,669,670,671,672,673,674,675,676,677,678,679,680,681,682,683,684,685,686,687,688,689,690,691,693,694,695,696,697,698,699,700,701,702,703,704,705,706,707,708,709,710,711,712,713,714,715,716,717,718,719,720,721,722,723,724,725,726,727,728,729,730,731,732,733,734,735,736,737,738,739,740,741,742,743,744,745,746,747,748,749,750,751,752,753,754,755,756,757,758,759,760,761,762,763,764,765,766,767,768,769,770,771,772,773,774,775,776,777,778,779,780,781,782,783,784,785,786,787,788,789,791,792,793,794,795,796,797,798,799,800,801,802,803,804,805,806,807,808,809,810,811,812,813,814,815,816,817,818,819,820,822,824,825,826,827,828,829,832,833,834,835,836,837,838,839,840,841,842,843,844,845,846,847,848,849,850,851,852,853,854,855,856,857,858,859,860,861,862,863,864,865,866,867,868,869,870,871,872,873,874,875,876,877,880,881,882,883,885,886,887,888,889,891,892,894,895,896,897,898,899,900,901,902,903,904,905,906,907,908,909,910,911,912,913,914,915,916,917,918,919,920,921,922,923,924,925,926,927,928,929,930,931,932,933,934,935,936,937,938,939,940,941,942,943,944,945,946,947,948,949,950,951,952,953,954,955,956,957,958,959,960,961,962,963,964,965,966,967,968,969,970,971,972,973,974,975,976,977,978,979,980,981,982,983,984,985,986,987,988,989,990,991,992,993,994,995,996,997,998,999}'::text[]) THEN pg_catalog.left(("patients"."zip")::text, 3) WHEN pg_catalog.left(("patients"."zip")::text, 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE CASE WHEN pg_catalog.left(pg_catalog.regexp_replace(("patients"."zip")::text, E'\\D', '', 'g'), 3) = ANY ('{036,059,063,102,203,556,692,790,821,823,830,831,878,879,884,890,893}'::text[]) THEN '000' ELSE pg_catalog.left(pg_catalog.regexp_replace(("patients"."zip")::text, E'\\D', '', 'g'), 3) END END AS "zip",
    CAST(CASE WHEN "patients"."email" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "email",
    CAST(CASE WHEN "patients"."phone" IS NULL THEN NULL ELSE '[REDACTED]' END AS text) AS "phone",
    "patients"."created_at" AS "created_at"
  FROM "public"."patients"
 WHERE clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer));
ALTER VIEW "clinician"."patients" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."patients" FROM PUBLIC;
GRANT SELECT ("id", "clinic_id", "full_name", "ssn", "birth_date", "zip", "email", "phone", "created_at") ON "clinician"."patients" TO "clinician";
COMMENT ON VIEW "clinician"."patients" IS 'policyc: public.patients as group clinician sees it (masked, filtered)';

-- view:clinician:visits
CREATE VIEW "clinician"."visits" WITH (security_barrier = true) AS
SELECT
    "visits"."id" AS "id",
    "visits"."patient_id" AS "patient_id",
    "visits"."clinic_id" AS "clinic_id",
    "visits"."visited_at" AS "visited_at",
    "visits"."diagnosis" AS "diagnosis",
    "visits"."notes" AS "notes",
    "visits"."provider" AS "provider"
  FROM "public"."visits"
 WHERE clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer));
ALTER VIEW "clinician"."visits" OWNER TO policyc_owner;
REVOKE ALL ON "clinician"."visits" FROM PUBLIC;
GRANT SELECT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "clinician"."visits" TO "clinician";
GRANT INSERT ("id", "patient_id", "clinic_id", "visited_at", "diagnosis", "notes", "provider") ON "clinician"."visits" TO "clinician";
GRANT UPDATE ("diagnosis", "notes") ON "clinician"."visits" TO "clinician";
COMMENT ON VIEW "clinician"."visits" IS 'policyc: public.visits as group clinician sees it (masked, filtered)';

-- rls:public.claims
DROP POLICY IF EXISTS "policyc_billing" ON "public"."claims";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."claims";
ALTER TABLE "public"."claims" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."claims" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."claims" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."claims" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND claims.patient_id = p.id) AND (visit_id IS NULL OR EXISTS (SELECT 1 FROM public.visits AS v WHERE v.id = claims.visit_id AND v.patient_id = claims.patient_id AND v.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND claims.patient_id = p.id) AND (visit_id IS NULL OR EXISTS (SELECT 1 FROM public.visits AS v WHERE v.id = claims.visit_id AND v.patient_id = claims.patient_id AND v.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))));

-- rls:public.notes
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."notes";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."notes";
ALTER TABLE "public"."notes" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."notes" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."notes" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_clinician" ON "public"."notes" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND notes.patient_id = p.id)))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (EXISTS (SELECT 1 FROM public.patients AS p WHERE p.clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer)) AND notes.patient_id = p.id)));

-- rls:public.patients
DROP POLICY IF EXISTS "policyc_billing" ON "public"."patients";
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."patients";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."patients";
ALTER TABLE "public"."patients" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."patients" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."patients" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."patients" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));
CREATE POLICY "policyc_clinician" ON "public"."patients" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));

-- rls:public.visits
DROP POLICY IF EXISTS "policyc_billing" ON "public"."visits";
DROP POLICY IF EXISTS "policyc_clinician" ON "public"."visits";
DROP POLICY IF EXISTS "policyc_passthrough" ON "public"."visits";
ALTER TABLE "public"."visits" DISABLE ROW LEVEL SECURITY;
ALTER TABLE "public"."visits" ENABLE ROW LEVEL SECURITY;
CREATE POLICY policyc_passthrough ON "public"."visits" AS PERMISSIVE FOR ALL TO PUBLIC
    USING (true) WITH CHECK (true);
CREATE POLICY "policyc_billing" ON "public"."visits" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'billing' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));
CREATE POLICY "policyc_clinician" ON "public"."visits" AS RESTRICTIVE FOR ALL TO policyc_owner
    USING ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))))
    WITH CHECK ((SELECT CURRENT_USER) <> 'clinician' OR (clinic_id = (SELECT CAST(policyc.claim('clinic_id') AS integer))));

-- trigger:public.claims
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."claims";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."claims";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."claims";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."claims"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."claims"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."claims"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '[]');

-- trigger:public.notes
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."notes";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."notes";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."notes";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."notes"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."notes"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."notes"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["body"]');

-- trigger:public.patients
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."patients";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."patients";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."patients";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."patients"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."patients"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."patients"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["birth_date", "email", "full_name", "phone", "ssn", "zip"]');

-- trigger:public.visits
DROP TRIGGER IF EXISTS policyc_audit_insert ON "public"."visits";
DROP TRIGGER IF EXISTS policyc_audit_update ON "public"."visits";
DROP TRIGGER IF EXISTS policyc_audit_delete ON "public"."visits";
CREATE TRIGGER policyc_audit_insert AFTER INSERT ON "public"."visits"
    REFERENCING NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');
CREATE TRIGGER policyc_audit_update AFTER UPDATE ON "public"."visits"
    REFERENCING OLD TABLE AS policyc_old NEW TABLE AS policyc_new
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');
CREATE TRIGGER policyc_audit_delete AFTER DELETE ON "public"."visits"
    REFERENCING OLD TABLE AS policyc_old
    FOR EACH STATEMENT EXECUTE FUNCTION policyc.audit_row_changes('["id"]', '["diagnosis", "notes"]');

-- approvers
DO $policyc$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['security_analysts']::text[] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
            EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END
$policyc$;
DO $policyc$
DECLARE
    g text;
BEGIN
    FOR g IN SELECT DISTINCT e.grantee::regrole::text
               FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) e
              WHERE p.oid IN ('audit.approve(bigint, text)'::regprocedure,
                              'audit.deny(bigint, text)'::regprocedure)
                AND e.grantee NOT IN (0, p.proowner)
    LOOP
        EXECUTE pg_catalog.format(
            'REVOKE EXECUTE ON FUNCTION audit.approve(bigint, text), audit.deny(bigint, text) FROM %s', g);
    END LOOP;
END
$policyc$;
DELETE FROM policyc.approver_roles;
INSERT INTO policyc.approver_roles (role_name) VALUES
    ('security_analysts');
GRANT USAGE ON SCHEMA audit TO "security_analysts";
GRANT EXECUTE ON FUNCTION audit.approve(bigint, text), audit.deny(bigint, text) TO "security_analysts";
GRANT SELECT ON audit.approvals, audit.pending_approvals TO "security_analysts";

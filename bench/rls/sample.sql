-- Baseline for bench/consult.sh, step 3 of 3: the caseload pgbench reads
-- from, numbered 1..n, for the organisation :'org' and account :'account'
-- (the same predicate as the policy, computed here by the owner).
\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET search_path = bench_rls;
DROP TABLE IF EXISTS caseload;
CREATE TABLE caseload (n integer PRIMARY KEY, person_id bigint NOT NULL);
INSERT INTO caseload (n, person_id)
SELECT row_number() OVER (ORDER BY random()), person_id
FROM (
    SELECT DISTINCT m.person_id
    FROM mandate m
    JOIN organisation o ON o.id = m.organisation_id
    LEFT JOIN account a ON a.id = m.account_id
    WHERE o.code = :'org'
      AND (m.account_id IS NULL OR a.login = :'account')
      AND m.valid_from <= current_date
      AND (m.valid_to IS NULL OR m.valid_to > current_date)
) live;
GRANT SELECT ON caseload TO bench_rls_reader;
VACUUM ANALYZE caseload;
SELECT count(*) AS caseload FROM caseload \gset
\echo caseload :caseload

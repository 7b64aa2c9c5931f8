-- pgbench script: one consultation = one random person of the session's
-- caseload, every field group (identity, contact, NIR, status), through
-- row-level security. \gset fails the client unless exactly one row comes
-- back, so a policy that hid the row would abort the run.
\set n random(1, :caseload)
SELECT p.ft_id, p.nom, p.prenom, p.date_naissance,
       p.email, p.telephone, p.adresse, p.code_postal, p.commune,
       p.nir,
       p.statut, p.date_inscription, p.date_fin
FROM bench_rls.person p
WHERE p.id = (SELECT c.person_id FROM bench_rls.caseload c WHERE c.n = :n)
\gset r_

-- Baseline for bench/consult.sh, step 1 of 3: a fresh schema with staging
-- tables shaped like the CSV files (README, "CSV format"). The CSVs are
-- then loaded with COPY ... FROM STDIN by the script.
\set ON_ERROR_STOP on
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS bench_rls CASCADE;
CREATE SCHEMA bench_rls;
SET search_path = bench_rls;

CREATE TABLE stage_organisation (code text, kind text, name text, departement text);
CREATE TABLE stage_account (login text, organisation text, role text, state text,
                            requested_by text, approved_by text);
CREATE TABLE stage_person (ft_id text, nir text, nom text, prenom text, date_naissance date,
                           email text, telephone text, adresse text, code_postal text,
                           commune text, statut text, date_inscription date, date_fin date);
CREATE TABLE stage_mandate (reference text, organisation text, account text, ft_id text,
                            purpose text, valid_from date, valid_to date, source text);

-- Nothing changes on PostgreSQL yet: this version keeps both backends'
-- numbering aligned. On SQLite, 0004 drops the per-leaf columns and the
-- low subtree hashes and moves the query index to merged runs of postings.
SELECT 1;

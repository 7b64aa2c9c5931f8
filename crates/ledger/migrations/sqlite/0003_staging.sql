-- Nothing changes on SQLite: this version keeps both backends' numbering
-- aligned. On PostgreSQL, 0003 lets several server processes append
-- through a staging table that one of them integrates; a SQLite ledger has
-- one process, its single writer.
SELECT 1;

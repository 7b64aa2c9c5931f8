-- Nothing changes on PostgreSQL yet: this version keeps both backends'
-- numbering aligned. On SQLite, 0006 moves the hashes of level 8 and up to
-- a table of their own.
SELECT 1;

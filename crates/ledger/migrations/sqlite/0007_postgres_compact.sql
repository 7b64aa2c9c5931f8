-- Nothing changes on SQLite: this version keeps both backends' numbering
-- aligned. On PostgreSQL, 0007 does what 0004 to 0006 did here.
SELECT 1;

-- Nothing changes on PostgreSQL yet: this version keeps both backends'
-- numbering aligned. On SQLite, 0005 records each run's chunk format.
SELECT 1;

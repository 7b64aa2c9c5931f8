-- Nothing changes on PostgreSQL: this version keeps both backends'
-- numbering aligned. On SQLite, 0002 moves the query indexes to tables
-- built a whole segment at a time, because SQLite's WAL writes every page a
-- commit touches; PostgreSQL keeps its native indexes of 0001.
SELECT 1;

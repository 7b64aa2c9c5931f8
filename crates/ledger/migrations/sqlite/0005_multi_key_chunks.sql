-- Runs record how their chunks are laid out: 0, one key per chunk (every
-- run built under 0004), or 1, consecutive postings of any keys (runs
-- built from now on). A person read once in a run took a row of its own;
-- now such persons share rows. Existing runs stay as they are and are read
-- in their format until merges replace them.
ALTER TABLE run ADD COLUMN format INTEGER NOT NULL DEFAULT 0 CHECK (format IN (0, 1));

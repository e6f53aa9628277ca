-- stageflow: transaction=off
-- stageflow: phase=expand
-- CONCURRENTLY keeps writes flowing while the index builds; it cannot run inside a transaction.
CREATE INDEX CONCURRENTLY IF NOT EXISTS notes_created_at_idx ON notes (created_at);

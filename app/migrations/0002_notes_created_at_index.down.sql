-- stageflow: transaction=off
DROP INDEX CONCURRENTLY IF EXISTS notes_created_at_idx;

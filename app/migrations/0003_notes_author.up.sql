-- stageflow: phase=expand
-- Nullable with no default: a catalog-only change, and releases that never write it keep working.
ALTER TABLE notes ADD COLUMN IF NOT EXISTS author text;

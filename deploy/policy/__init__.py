"""Policy: the guards that fail closed, promotion to prod, and who acts."""

"""Dynamic batching with early exit and compaction."""

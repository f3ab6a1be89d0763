"""The audit writer: mapper (pure) → writer (warehouse), sequenced by job."""

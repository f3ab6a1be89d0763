"""Warehouse side: the audit schema and the read-back queries over it."""

"""The fault campaign: crashes and outages under a workload, then a reconciliation."""

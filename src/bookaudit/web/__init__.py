"""`bookaudit serve`: the read-only web pages over the warehouse (Flask, server-rendered)."""

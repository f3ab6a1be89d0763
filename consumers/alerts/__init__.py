"""The alerting job: config → model → rules → state → sink, sequenced by job."""

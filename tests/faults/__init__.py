"""Fault tests: real processes against private Redis and PostgreSQL servers, under real faults."""

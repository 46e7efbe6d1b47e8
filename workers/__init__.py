"""The Celery side of thermoml: claim a job row, run its kind, record, finish."""

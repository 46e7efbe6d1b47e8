"""Pure computation for thermoml: job kinds, telemetry and data sets.

Nothing here talks HTTP, a database or Celery; ``service`` and ``workers`` build on it.
"""

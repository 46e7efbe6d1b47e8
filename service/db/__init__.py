"""Database: tables, engine and session, and repositories (one module per resource)."""

"""The dashboard's templates and static assets (package data, served by the API itself)."""

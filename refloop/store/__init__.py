"""The SQL read model and audit log (SQLite by default, PostgreSQL via DATABASE_URL)."""

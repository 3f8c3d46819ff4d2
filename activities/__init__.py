"""Activities: all of the loop's I/O (SQL, webhooks, result delivery)."""

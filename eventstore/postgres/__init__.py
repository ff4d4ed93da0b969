"""The PostgreSQL adapter: the only code that opens connections, converts driver errors (by SQLSTATE)
and retries transient ones. The event log, the intake transaction, outcomes, lease SQL, migrations."""

#!/bin/sh
# PostgreSQL image init script (runs once, on an empty data directory): the database `eventstore`
# and its owner role `eventstore_owner`, which runs the migrations. CREATEROLE lets it create the
# group roles of migration 0005 and, on PostgreSQL 16+, grant them (it gets ADMIN on roles it creates).
# The password comes from the file named by EVENTSTORE_OWNER_PASSWORD_FILE (a Docker secret).
set -eu
password="$(cat "${EVENTSTORE_OWNER_PASSWORD_FILE:?set EVENTSTORE_OWNER_PASSWORD_FILE}")"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v owner_password="$password" <<'SQL'
CREATE ROLE eventstore_owner LOGIN CREATEROLE PASSWORD :'owner_password';
CREATE DATABASE eventstore OWNER eventstore_owner;
REVOKE ALL ON DATABASE eventstore FROM PUBLIC;
SQL

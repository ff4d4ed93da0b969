#!/bin/sh
# Runs roles.sql with the passwords read from secret files in $SECRETS_DIR (default /run/secrets):
# owner_password (to connect), projector_password, api_password, follower_password, operator_password.
set -eu
dir="${SECRETS_DIR:-/run/secrets}"
read_secret() { cat "$dir/$1"; }
pgpass="${PGPASSFILE:-/tmp/pgpass}"
umask 077
printf '%s:%s:%s:%s:%s\n' "${PGHOST:-localhost}" "${PGPORT:-5432}" "${PGDATABASE:-eventstore}" \
    "${PGUSER:-eventstore_owner}" "$(read_secret owner_password)" > "$pgpass"
export PGPASSFILE="$pgpass"
exec psql -v ON_ERROR_STOP=1 \
    -v projector_password="$(read_secret projector_password)" \
    -v api_password="$(read_secret api_password)" \
    -v follower_password="$(read_secret follower_password)" \
    -v operator_password="$(read_secret operator_password)" \
    -f "$(dirname "$0")/roles.sql"

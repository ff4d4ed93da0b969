#!/bin/sh
# Creates the secret files deploy/compose.yaml reads (random passwords and the database URLs built
# from them) in deploy/secrets/, readable by the owner only. Existing files are kept.
set -eu
dir="$(cd "$(dirname "$0")" && pwd)/secrets"
mkdir -p "$dir"
umask 077
gen() { [ -s "$dir/$1" ] || python3 -c 'import secrets; print(secrets.token_urlsafe(24), end="")' > "$dir/$1"; }
url() { [ -s "$dir/$1_database_url" ] || printf 'postgresql://%s:%s@postgres:5432/eventstore' "$2" "$(cat "$dir/$1_password")" > "$dir/$1_database_url"; }
for s in postgres owner projector api follower operator; do gen "${s}_password"; done
url owner eventstore_owner
url projector es_projector
url api es_api
url follower es_follower
echo "secrets in $dir (never commit them)"

#!/bin/sh
# Entrypoint of the eventstore image: for every VAR_FILE variable (e.g. EVENTSTORE_DATABASE_URL_FILE
# pointing at a Docker or Kubernetes secret), export VAR with the file's content, then run
# `eventstore "$@"`. Setting both VAR and VAR_FILE is refused: one source per secret.
set -eu
for name in EVENTSTORE_DATABASE_URL EVENTSTORE_KAFKA_CONFIG EVENTSTORE_ALERT_WEBHOOK; do
    file_var="${name}_FILE"
    eval "file=\${$file_var:-}"
    eval "value=\${$name:-}"
    if [ -n "$file" ]; then
        if [ -n "$value" ]; then
            echo "docker-entrypoint: both $name and $file_var are set; set only one" >&2
            exit 3
        fi
        if [ ! -r "$file" ]; then
            echo "docker-entrypoint: $file_var names $file, which cannot be read" >&2
            exit 3
        fi
        # Trailing newlines of the file are dropped by the command substitution.
        export "$name=$(cat "$file")"
        unset "$file_var"
    fi
done
exec eventstore "$@"

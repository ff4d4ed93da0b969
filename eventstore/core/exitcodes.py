"""The exit codes of every ``eventstore`` command, one place for all of them (docs/operations.md): a
script can tell a failed operation from a wrong command line, a configuration problem and bad data."""

EXIT_OK = 0
EXIT_FAILURE = 1  # the command ran and failed (a component stopped, an operation was refused)
EXIT_USAGE = 2  # the command line was wrong (argparse's own code)
EXIT_CONFIG = 3  # configuration missing or malformed, or a server unreachable / not migrated
EXIT_INTEGRITY = 4  # the data does not verify (tampered history, a wrong result)

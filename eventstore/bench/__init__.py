"""Benchmarks run from the CLI (``eventstore bench ...``); never part of the test suite."""

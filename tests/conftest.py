"""Fixture plugins: real servers (fix_servers) and projectors in threads or processes (fix_projector)."""

pytest_plugins = ["tests.fix_servers", "tests.fix_projector", "tests.fix_api"]

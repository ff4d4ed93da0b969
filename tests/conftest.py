"""Fixture plugins: real servers (fix_servers), projectors in threads or processes (fix_projector),
agents registered automatically (fix_agents)."""

pytest_plugins = ["tests.fix_servers", "tests.fix_projector", "tests.fix_api", "tests.fix_agents"]

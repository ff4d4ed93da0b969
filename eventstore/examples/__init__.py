"""Example applications shipped with eventstore."""

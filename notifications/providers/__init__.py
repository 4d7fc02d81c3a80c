"""Clients for third-party providers, pointed at the sandbox locally and in tests."""

"""The integration test harness: real services on loopback, started by pytest fixtures."""

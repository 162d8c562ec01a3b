"""Never built: see setup.py."""

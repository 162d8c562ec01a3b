"""Session fixtures for nginx, sshd + rrsync and the local upstream index."""

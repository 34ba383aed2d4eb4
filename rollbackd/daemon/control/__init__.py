"""Manual override: the control socket, its commands, and the rollbackctl client."""

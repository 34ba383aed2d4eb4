"""The incident desk: the one owner of an incident's life (open, approve, hold, close)."""

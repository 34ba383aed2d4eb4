"""Backups: taken, checksummed, verified before they count, cataloged, kept, checked again."""

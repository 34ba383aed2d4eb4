"""Probes: observe a target and return an Observation; never raise, never hang."""

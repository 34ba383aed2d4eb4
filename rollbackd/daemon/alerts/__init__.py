"""Prometheus alerting: the shipped rules file, and Alertmanager's webhook as a trigger."""

"""rollbackd: a self-healing monitoring daemon.

The installed import names live under this one package (rollbackd.daemon, rollbackd.probes,
rollbackd.policies) so that they cannot collide with other distributions' top-level
names (python-daemon installs `daemon`).
"""

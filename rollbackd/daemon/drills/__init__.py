"""Recovery drills: break a staging target on purpose, time the daemon's recovery, check it.

Kept import-light on purpose: rollbackd.daemon.config imports rollbackd.daemon.drills.settings, so this package's
__init__ must not pull in the monitor, the runner or the scheduler (import cycles). The
modules:

- settings: [targets.<name>.drills] (schedule, injectors, timeout, approval)
- scenarios: the five scenarios, what detects each and what each needs
- injectors, injectors_git, injectors_data, injectors_docker: how a fault is put in
- health: the target's state before and after (version, revision, key, row counts, login)
- preflight: why a drill must not start now (busy, unhealthy, gates that would stop the rollback)
- procedure: one scenario from onset to verified, with its timings
- record, report, text: drill results, the Markdown + JSON report, the table
- store: what survives restarts (since when a schedule exists, the last success)
- schedule: cron triggers and the overdue rule
- service: what the daemon owns: start, follow, schedule, metrics
"""

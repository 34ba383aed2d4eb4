"""The demo and the sample app kit: `rollbackd demo`, its session, the sample grading app and
the workspace tests deploy it in. Production code never imports this package (an import-linter
contract in pyproject.toml); it imports production code freely.

Kept empty on purpose: `python -m rollbackd.daemon.demo.sampleapp.service` (the sample app's process) and
the tests' `rollbackd.daemon.demo.workspace` must not load the daemon through this package."""

"""rollbackd: the process that wires probes and policies to executors, the journal and people."""

__version__ = "0.1.0"

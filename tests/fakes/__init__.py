"""Hand-written fakes, only for servers that cannot run here (the Kubernetes API)."""

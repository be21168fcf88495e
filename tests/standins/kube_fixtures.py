"""Fixtures for the Kubernetes stand-in (filled in by the kube stand-in work)."""

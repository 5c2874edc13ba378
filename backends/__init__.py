"""Backends: the `Workspace` protocol (workspace.py) and its implementations (local/, azure/)."""

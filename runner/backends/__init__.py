"""Backends: small adapters that turn a shot request into a video file."""

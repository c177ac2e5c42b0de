"""Loopback servers that speak providers' real protocols, for tests of the real SDKs."""

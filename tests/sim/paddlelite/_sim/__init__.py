"""Internals of the Paddle-Lite simulator (not part of the real wheel's API)."""

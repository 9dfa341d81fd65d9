"""bisect-lite: find the first op whose output differs between two inference engines."""

__version__ = "0.1.0"

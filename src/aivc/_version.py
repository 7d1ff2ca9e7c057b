"""The version of aivc, in one place."""

__version__ = "0.1.0"

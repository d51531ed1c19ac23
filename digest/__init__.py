"""digest: a newsletter digest generator and sender for newsrooms."""

__version__ = "0.1.0"

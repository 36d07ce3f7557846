"""r1lab: train reasoning language models the DeepSeek-R1 way, and test the ideas of the talk."""

__version__ = "0.1.0"


class R1labError(Exception):
    """A user-facing error: the CLI prints its message (which names the file, field or option) and exits 2."""

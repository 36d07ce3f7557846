"""r1lab: train reasoning language models the DeepSeek-R1 way, and test the ideas of the talk."""

__version__ = "0.1.0"


class R1labError(Exception):
    """A user-facing error: the CLI prints its message (which names the file, field or option) and exits 2."""


def is_file(path) -> bool:
    """Path.is_file that answers False, not OSError, for a name the system cannot even look up (too long)."""
    from pathlib import Path
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False

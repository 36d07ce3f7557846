"""A reward a random tiny model can learn in seconds, importable by name ('tests.learnable:low_ids')
so that subprocess runs (accelerate launch) can use it too."""


def low_ids(completion, problem):
    """The share of byte-level tokens (id < 258) in the completion."""
    return sum(t < 258 for t in completion.token_ids) / max(1, len(completion.token_ids))

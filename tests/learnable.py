"""A reward a random tiny model can learn in seconds, importable by name ('tests.learnable:low_ids')
so that subprocess runs (accelerate launch) can use it too."""
import zlib


def low_ids(completion, problem):
    """The share of byte-level tokens (id < 258) in the completion."""
    return sum(t < 258 for t in completion.token_ids) / max(1, len(completion.token_ids))


def half_constant(completion, problem):
    """low_ids on problems whose id hashes odd, 0 on the others: about half the groups are all-equal."""
    return low_ids(completion, problem) if odd(problem) else 0.0


def odd(problem) -> bool:
    return zlib.crc32(problem.id.encode()) % 2 == 1


def register(monkeypatch, *rewards) -> None:
    """Rewards by their bare names for one test: in r1lab's registry, and among the names r1lab.config accepts
    (config imports nothing from the domain, so it keeps its own list of the registered names)."""
    from r1lab import schema as config
    from r1lab.rewards import REWARDS
    for reward in rewards:
        monkeypatch.setitem(REWARDS, reward.__name__, reward)
    monkeypatch.setattr(config, "BUILTIN_REWARDS", (*config.BUILTIN_REWARDS, *(r.__name__ for r in rewards)))

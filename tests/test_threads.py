"""Thread choice under load (r1lab/threads.py): the rule, the load reading, the governor, the CLI option.
Nothing here times anything: the load is a mocked clock."""
import json

import pytest
import torch

from r1lab import R1labError, threads
from r1lab.cli import main
from r1lab.threads import ThreadGovernor, choose_threads, fixed_threads, machine_busy_seconds


@pytest.mark.parametrize("cores, others, ceiling, expected", [
    (2, 0.0, None, 2), (2, 0.4, None, 2),          # quiet, or a little background work: every core
    (2, 0.6, None, 1), (2, 1.0, None, 1),          # one competing process takes its core
    (2, 3.0, None, 1),                             # never fewer than one
    (8, 2.2, None, 6), (8, 0.0, 4, 4),             # OMP_NUM_THREADS is the most it uses
])
def test_one_thread_per_core_the_others_leave_free(cores, others, ceiling, expected):
    assert choose_threads(cores, others, ceiling) == expected


def test_busy_seconds_are_read_from_proc_stat_without_idle_iowait_or_guest(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  300 20 80 5000 400 10 5 0 40 0\ncpu0 1 2 3 4\n")
    monkeypatch.setattr(threads.os, "sysconf", lambda name: 100)
    assert machine_busy_seconds(stat) == pytest.approx((300 + 20 + 80 + 10 + 5) / 100)
    assert machine_busy_seconds(tmp_path / "absent") is None


@pytest.mark.parametrize("text, expected", [(None, None), ("", None), ("3", 3)])
def test_a_fixed_count_is_read_from_the_environment(monkeypatch, text, expected):
    if text is not None:
        monkeypatch.setenv("R1LAB_THREADS", text)
    assert fixed_threads() == expected


@pytest.mark.parametrize("text", ["0", "two", "-1", "1.5"])
def test_a_bad_fixed_count_names_the_option(monkeypatch, text):
    monkeypatch.setenv("R1LAB_THREADS", text)
    with pytest.raises(R1labError, match=r"R1LAB_THREADS \(--threads\) must be a whole number >= 1"):
        fixed_threads()


def clock(monkeypatch, readings):
    """The governor's clock replaced: each look returns the next (wall, machine busy, own CPU) seconds."""
    looks = iter(readings)
    monkeypatch.setattr(ThreadGovernor, "_clock", staticmethod(lambda: next(looks)))
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_the_governor_follows_the_load_between_steps(monkeypatch):
    # start quiet (we used 0.1 of the 0.1 s busy), then a rival takes a core for 10 s, then leaves
    clock(monkeypatch, [(0, 0, 0), (0.1, 0.1, 0.1), (10.1, 20.1, 10.1), (20.1, 30.1, 20.1)])
    governor = ThreadGovernor(window=0)
    assert (governor.threads, torch.get_num_threads(), governor.others) == (2, 2, 0.0)
    assert governor.adjust() == 1 and torch.get_num_threads() == 1 and governor.others == pytest.approx(1.0)
    assert governor.adjust() == 2 and torch.get_num_threads() == 2
    assert "2 of 2 cores" in governor.describe()


def test_a_fixed_count_is_kept_whatever_the_load(monkeypatch):
    monkeypatch.setenv("R1LAB_THREADS", "1")
    clock(monkeypatch, [(0, 0, 0)] + [(t, 0.0, t) for t in range(1, 5)])
    governor = ThreadGovernor(window=0)
    assert [governor.adjust() for _ in range(3)] == [1, 1, 1] and torch.get_num_threads() == 1
    assert "fixed by --threads" in governor.describe()


def test_without_proc_stat_torch_keeps_its_choice(monkeypatch):
    torch.set_num_threads(2)
    clock(monkeypatch, [None] * 5)
    assert ThreadGovernor(window=0).adjust() == 2 and torch.get_num_threads() == 2


def test_threads_option_reaches_a_training_stage_and_its_metrics(tmp_path):
    out = tmp_path / "g"
    main(["train", "grpo", "--model", "tiny-random", "--threads", "1", "--steps", "2", "--prompts-per-step", "2",
          "--samples-per-prompt", "2", "--micro-batch-size", "4", "--max-new-tokens", "4", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["threads"] for row in rows] == [1, 1] and torch.get_num_threads() == 1


def test_threads_is_refused_below_one(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "tiny-random", "--threads", "0"])
    assert "--threads" in capsys.readouterr().err

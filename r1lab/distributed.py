"""Data-parallel training on accelerate: one process per device, started by `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 -m r1lab train grpo --model tiny-random ...
    r1lab train grpo --num-processes 2 ...        (the same launch; on CPUs the processes talk over gloo)

One process runs exactly the same code with a world of one. The choices, each tested
(tests/test_distributed.py: two gloo processes end with the parameters of one process):
- groups stay whole: each process takes a contiguous share of the step's prompts and samples all G
  completions of each, so the group statistics of eq. 3 need no communication (prompts per step must
  divide by the number of processes);
- each prompt's samples are drawn from their own random streams, seeded by (seed, step, prompt), so the
  completions do not depend on the number of processes;
- loss denominators (sequences, tokens) are global and each process's loss is multiplied by the world
  size, so DDP's gradient average equals the one-process gradient of the whole batch;
- metrics come from the gathered per-sample values; only the main process writes logs and checkpoints.

Sharded training (FSDP, DeepSpeed) is refused with a clear error, however accelerate was configured
(its launcher's environment says so even where accelerate itself would quietly fall back: on CPUs it
runs DDP under an FSDP config). Why not FSDP2 yet, although torch's `fully_shard` runs here on CPUs over
gloo: accelerate enables its FSDP plugin only on accelerators (on CPUs it cannot be tested at all),
and r1lab's stages assume whole parameters outside the training forward: rollouts and GRPO's scoring
pass run the model outside the prepared module's forward, where FSDP2 leaves the parameters it gathers
there (embeddings, final norm, the `lm_head.weight` that the chunked log-prob head reads) sharded;
rollouts also call the model a different number of times on each process (completions end at
different lengths), so per-layer all-gathers would wait on each other; compete's processes run
different numbers of micro-batches; checkpoints and the optimiser state are saved by the main process
alone. DeepSpeed stays unsupported: FSDP2 is the route planned for models that do not fit one GPU
(README, "Scale out").
"""
from __future__ import annotations

import contextlib
import os
import random
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from r1lab import R1labError


class Parallel:
    def __init__(self):
        refuse_sharding()
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())   # cpu: gloo across processes
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process

    def check_divides(self, count: int, what: str = "prompts_per_step") -> None:
        if count % self.world:
            raise R1labError(f"{what} = {count} must divide by the number of processes ({self.world})")

    def share(self, items: list, what: str = "prompts_per_step") -> list:
        """This process's contiguous share of `items` (the same list on every process)."""
        self.check_divides(len(items), what)
        size = len(items) // self.world
        return items[self.rank * size:(self.rank + 1) * size]

    def prepare(self, module: torch.nn.Module, optimizer):
        """The module wrapped for data parallelism (DDP; one process: unwrapped)."""
        return self.accelerator.prepare(module, optimizer)

    def sync_unless(self, module, accumulating: bool):
        """No gradient all-reduce while accumulating micro-batches; one at the last."""
        return self.accelerator.no_sync(module) if accumulating and self.world > 1 else contextlib.nullcontext()

    def gather(self, values: list) -> list:
        """Every process's list, concatenated in rank order."""
        return gather_object(list(values)) if self.world > 1 else list(values)

    def total(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], device=self.accelerator.device, dtype=torch.float64)
        return self.accelerator.reduce(tensor, reduction="sum").item()

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def refuse_sharding() -> None:
    """An error when `accelerate launch` was configured for FSDP or DeepSpeed (see the module docstring)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        raise R1labError(f"accelerate is configured for FSDP (version {os.environ.get('FSDP_VERSION', '1')}), which r1lab "
                         "does not support yet: rollouts, the log-prob head and checkpoints assume whole parameters on "
                         "every process (r1lab/distributed.py says what is missing). Use DDP: configs/accelerate/ddp.yaml")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise R1labError("accelerate is configured for DeepSpeed, which r1lab does not support; for models that do not "
                         "fit one GPU, FSDP2 is the planned route (not there yet, r1lab/distributed.py). Use DDP: "
                         "configs/accelerate/ddp.yaml")


def launch_command(num_processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes N -m r1lab ARGV`: one process per GPU; on CPUs, N
    processes over gloo. Mixed precision is r1lab's own option, so accelerate's stays "no"."""
    return [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if num_processes > 1 else []),
            "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "r1lab", *argv]


def prompt_seeds(seed: int, step: int, count: int) -> list[int]:
    """One random-stream seed per prompt of a step, the same in every process."""
    return [random.Random(f"{seed}/{step}/{i}").getrandbits(62) for i in range(count)]

"""Data-parallel and sharded training: one process per device, started by `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 -m r1lab train grpo --model tiny-random ...
    r1lab train grpo --num-processes 2 ...        (the same launch; on CPUs the processes talk over gloo)
    r1lab train grpo --num-processes 2 --fsdp true ...   (FSDP2: parameters, gradients, optimiser state sharded)

One process runs exactly the same code with a world of one. The choices, each tested
(tests/test_distributed.py: two gloo processes end with the parameters of one process, DDP and FSDP2):
- groups stay whole: each process takes a contiguous share of the step's prompts and samples all G
  completions of each, so the group statistics of eq. 3 need no communication (prompts per step must
  divide by the number of processes);
- each prompt's samples are drawn from their own random streams, seeded by (seed, step, prompt), so the
  completions do not depend on the number of processes;
- loss denominators (sequences, tokens) are global and each process's loss is multiplied by the world
  size, so the gradient average (DDP's all-reduce, FSDP's reduce-scatter) equals the one-process
  gradient of the whole batch;
- metrics come from the gathered per-sample values; only the main process writes logs and checkpoints.

Sharded training (`fsdp: true`, or accelerate's FSDP config with `fsdp_version: 2`) is torch's FSDP2
(`fully_shard`) applied by r1lab itself: each decoder block (the model's `_no_split_modules`) is one
unit, the rest (embeddings, final norm, LM head) the root, around the whole `CompletionLogits` module so
that the chunked log-prob head reads the gathered head weight inside the root's forward. Not through
accelerate's FSDP plugin, which accelerate enables on accelerators only (on CPUs it would quietly run
DDP), so that the same code is tested here on CPU processes over gloo. What sharding changes:
- rollouts: processes decode different numbers of tokens, so a sharded forward (one all-gather per
  block per call) cannot serve them; the rollout engine samples from its own full copy of the weights
  (in the rollout dtype), refreshed once a step by every process together (`HFEngine.sync_weights`:
  one all-gather per parameter). The copy costs one model in the rollout dtype per device.
- every training forward runs through the sharded module (GRPO's scoring pass and the reference
  model too, itself sharded); compete pads its micro-batch count to the largest process's with
  zero-weight passes, since every forward gathers from all processes;
- checkpoints: every process joins in gathering the full weights and optimiser state (`save_step`);
  the main process writes a plain HF folder and the optimiser state by parameter name, which a resumed
  run, sharded or not, loads (`restore_state`).
LoRA shards too (frozen base and adapters in the same units); its checkpoint is merged from the gathered
weights (checkpoint.merged_lora). Not with sharding: the vLLM engine (its weight push is not gathered
yet), dynamic sampling (several processes).
DeepSpeed is not supported: FSDP2 covers the same need.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from r1lab import R1labError
from r1lab.allocator import keep_freed_memory
from r1lab.threads import ThreadGovernor


class Parallel:
    def __init__(self, fsdp: bool = False):
        self.sharded = fsdp or sharding_from_launcher()
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())   # cpu: gloo across processes
        self.world, self.rank = self.accelerator.num_processes, self.accelerator.process_index
        self.is_main = self.accelerator.is_main_process
        self.threads = ThreadGovernor()         # torch's threads: the cores other processes leave free
        keep_freed_memory()                     # a step's buffers reused, not faulted in anew (r1lab/allocator.py)
        if self.sharded and not torch.distributed.is_initialized():        # one process, not launched: a group of one
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo",
                                                 store=torch.distributed.HashStore(), rank=0, world_size=1)
        if self.sharded and self.is_main:
            print(f"fsdp: parameters, gradients and optimiser state sharded over {self.world} process(es) (FSDP2)")

    def check_divides(self, count: int, what: str = "prompts_per_step") -> None:
        if count % self.world:
            raise R1labError(f"{what} = {count} must divide by the number of processes ({self.world})")

    def share(self, items: list, what: str = "prompts_per_step") -> list:
        """This process's contiguous share of `items` (the same list on every process)."""
        self.check_divides(len(items), what)
        size = len(items) // self.world
        return items[self.rank * size:(self.rank + 1) * size]

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module to train: sharded (FSDP2), wrapped for data parallelism (DDP), or as it is (one process).
        Build the optimiser after this, from the model's parameters (sharding replaces them)."""
        if self.sharded:
            return shard(module)
        if self.world == 1 and hasattr(module, "lookups_into_gradient"):
            module.lookups_into_gradient = True     # a tied embedding's gradient in place: not under DDP (tied_lookup.py)
        return self.accelerator.prepare(module)

    def prepare_frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        """A module that only scores (the reference model): sharded too under FSDP, else as it is."""
        return shard(module) if self.sharded else module

    def sync_unless(self, module, accumulating: bool):
        """No gradient communication while accumulating micro-batches; one at the last."""
        if self.sharded:
            module.set_requires_gradient_sync(not accumulating)
            return contextlib.nullcontext()
        return self.accelerator.no_sync(module) if accumulating and self.world > 1 else contextlib.nullcontext()

    def clip_grad_norm(self, module, max_norm: float, step: int) -> float:
        """Clip the gradients to a global L2 norm of `max_norm`; the norm before clipping. A NaN or infinite
        norm (a NaN loss or gradient) stops the run here, before the optimiser step and before any checkpoint
        is written: every process sees the same global norm, so all stop together."""
        if not self.sharded:
            norm = self.accelerator.clip_grad_norm_(module.parameters(), max_norm).item()
        else:
            from torch.distributed.tensor import DTensor
            norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)       # a DTensor: each shard's part
            norm = (norm.full_tensor() if isinstance(norm, DTensor) else norm).item()
        if not math.isfinite(norm):
            raise R1labError(f"step {step}: the gradient norm is {norm} (a NaN or infinite loss or gradient); the run "
                             "stops before the update, and the last checkpoint is untouched. Check the reward weights "
                             "and the data, or lower learning_rate (or use mixed_precision no)")
        return norm

    def gather(self, values: list) -> list:
        """Every process's list, concatenated in rank order."""
        return gather_object(list(values)) if self.world > 1 else list(values)

    def total(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([float(value)], device=self.accelerator.device, dtype=torch.float64)
        return self.accelerator.reduce(tensor, reduction="sum").item()

    def most(self, value: int) -> int:
        """The largest of every process's `value`."""
        return max(self.gather([value]))

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def state_gb(model: torch.nn.Module, optimizer) -> float:
    """GB of parameters and optimiser state this process holds: its shards when sharded (gradients are
    freed after each step, so not counted)."""
    from torch.distributed.tensor import DTensor
    tensors = [*model.parameters(), *(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))]
    local = [t.to_local() if isinstance(t, DTensor) else t for t in tensors]
    return sum(t.numel() * t.element_size() for t in local) / 2 ** 30


def shard(module: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over this process group: each decoder block one unit, `module` the root (see the docstring)."""
    from torch.distributed.fsdp import fully_shard
    blocks = set()
    for m in module.modules():
        blocks |= set(getattr(m, "_no_split_modules", None) or [])
    for m in list(module.modules()):
        if type(m).__name__ in blocks:
            fully_shard(m)
    return fully_shard(module)


def sharding_from_launcher() -> bool:
    """Whether `accelerate launch` was configured for FSDP version 2 (r1lab shards itself; see the docstring).
    FSDP version 1 and DeepSpeed are refused with what to use instead."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise R1labError("accelerate is configured for DeepSpeed, which r1lab does not support; for models that do not "
                         "fit one device use FSDP2: configs/accelerate/fsdp.yaml, or --fsdp true")
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return False
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise R1labError(f"accelerate is configured for FSDP version {version}; r1lab shards with FSDP2 only: set "
                         "fsdp_version: 2 (configs/accelerate/fsdp.yaml), or pass --fsdp true")
    return True


def lockstep(par: Parallel, passes: list, as_padding) -> list:
    """`passes` made as many as the process with the most has: every sharded forward gathers from all the
    processes, and DDP is kept in the same lockstep. The extra passes are `as_padding(passes[0])`, which must
    weigh 0 in the loss."""
    if par.world == 1:
        return passes
    return passes + [as_padding(passes[0])] * (par.most(len(passes)) - len(passes))


def is_sharded(model) -> bool:
    """Whether the model's parameters are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor
    return model is not None and any(isinstance(p, DTensor) for p in model.parameters())


def launch_command(num_processes: int, argv: list[str]) -> list[str]:
    """`accelerate launch --multi_gpu --num_processes N -m r1lab ARGV`: one process per GPU; on CPUs, N
    processes over gloo. Mixed precision is r1lab's own option, so accelerate's stays "no"."""
    return [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if num_processes > 1 else []),
            "--num_processes", str(num_processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "-m", "r1lab", *argv]


def prompt_seeds(seed: int, step: int, count: int) -> list[int]:
    """One random-stream seed per prompt of a step, the same in every process."""
    return [random.Random(f"{seed}/{step}/{i}").getrandbits(62) for i in range(count)]

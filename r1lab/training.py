"""What every stage shares: the device, LoRA, optimiser and schedule, metrics files, trackers, resume.

`device()` is the one place that decides where models run (accelerate's choice: this process's GPU under
`accelerate launch`, else the GPU, else the CPU). Training stages move the policy there in
`load_policy`; every command that only samples from a model (eval, rejection, distill's local teacher,
compete's other sources, serve, llm, generate) loads it with `load_on_device`. Both load, and `save_step`
saves, with transformers' own progress bars off (`quiet_transformers`): the stage's bar is the one shown.

Metrics go to `<out>/metrics.jsonl` always, and to the trackers `report_to` names (TRL's option): TensorBoard
(`<out>/tensorboard/`), Weights & Biases (`<out>/wandb/`; WANDB_MODE=offline works without a network),
Trackio and MLflow (where their own settings put them: TRACKIO_DIR, MLFLOW_TRACKING_URI), through
accelerate's tracker classes, main process only, the run's settings as hyperparameters. None by default:
TensorBoard is written only when asked for, whether or not it is installed. A tracker that is not
installed stops the stage before it writes anything, with the pip command (`check_trackers`). Project:
`r1lab` (wandb: $WANDB_PROJECT; mlflow: $MLFLOW_EXPERIMENT_NAME); run name: the output folder's last two
parts (runs/NAME/STAGE: NAME/STAGE). A resumed stage is a new tracker run, its steps continuing the checkpoint's.
"""
from __future__ import annotations

import json
import math
import os
import random
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from r1lab import R1labError, is_file, models
from r1lab.checkpoint import find_checkpoint, last_row, load_state, model_card, numbered_checkpoints, save_checkpoint
from r1lab.config import GRPOConfig, SFTConfig, changed_settings
from r1lab.schema import read_yaml, report_targets
from r1lab.data import read_jsonl, write_atomic, write_jsonl
from r1lab.distributed import is_sharded
from r1lab.hardware import device
from r1lab.runlock import lock_folder


def load_on_device(spec: str, dtype: str = "float32"):
    """(model, tokenizer) for a model spec, in eval mode on `device()`: for models that sample, never train."""
    with quiet_transformers():
        model, tokenizer = models.load_model(spec, dtype)
    return model.to(device()).eval(), tokenizer


@contextmanager
def quiet_transformers():
    """transformers' own progress bars (loading weights, writing shards) off while a model loads or saves: the
    stage's bar is the one shown. As they were after."""
    from transformers.utils import logging
    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()


def choose_precision(out: Path, mixed_precision: str, rollout_dtype: str | None = None, write: bool = True):
    """The stage's concrete precision (`auto` resolved for this device, r1lab/hardware.py): printed, and
    written to `<out>/precision.json` with the hardware it was chosen on."""
    from r1lab.hardware import cpu_name, resolve_precision
    precision = resolve_precision(mixed_precision, device(), rollout_dtype)
    if write:
        print(precision.describe())
        write_atomic(out / "precision.json", json.dumps({**asdict(precision), "device": str(device()), "cpu": cpu_name(),
                                                         "cpu_capability": torch.backends.cpu.get_cpu_capability()}))
    return precision


def seed_everything(seed: int, full_determinism: bool = False) -> None:
    """Seed Python's and torch's generators; with `full_determinism`, also make torch choose deterministic kernels
    for the rest of the process (on a GPU: cuBLAS's fixed workspace, memory-efficient attention's deterministic
    backward; without them a resumed GPU run drifted 3e-3 from an uninterrupted one, docs/gpu.md)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if full_determinism:
        deterministic_kernels()


def deterministic_kernels() -> None:
    """torch's deterministic kernels from now on, cuBLAS's included (its fixed workspace)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def check_inputs(config) -> None:
    """What a stage reads, checked before it writes anything (a stage that cannot start leaves no output
    folder behind). Each config class names its inputs (`INPUTS`); each kind of input has one check here:
    model specs (`check_spec`: nothing loaded, no hub; an endpoint URL for a teacher), the task with its
    options and one problem (which the rewards must fit), user tools importable, a data file present."""
    from r1lab.models import check_spec
    from r1lab.rewards import check_rewards_fit, parse_rewards
    from r1lab.tasks import get_task
    from r1lab.tools import load_tools

    def model(spec: str) -> None:
        if not spec.startswith(("http://", "https://")):
            check_spec(spec)

    def task():                         # goal_directed names a task without options
        return get_task(config.task, **getattr(config, "task_options", {}))

    def data() -> None:
        if not is_file(config.data):
            raise R1labError(f"{config.data}: data file not found")
    checks = {
        "model": lambda: model(config.model), "teacher": lambda: model(config.teacher),
        "models": lambda: [model(spec) for spec in config.models],
        "sources": lambda: [model(source["model"]) for source in config.sources],
        "task": task,
        "rewards": lambda: check_rewards_fit(parse_rewards(config.rewards), task().problems("train", 1, config.seed)[0]),
        "tools": lambda: load_tools(config.tools),
        "data": data}
    for name in type(config).INPUTS:
        checks[name]()


def check_world(config, processes: int, launching: bool = True) -> None:
    """A training stage's batch divides among `processes` data-parallel processes (whole groups for grpo and
    compete, examples for sft), and grpo's dynamic sampling runs in one process only (each process would stop
    drawing at a different round). Checked before a launch and again in each launched process (`launching`
    False: the message names the processes found, not the option)."""
    share = "batch_size" if isinstance(config, SFTConfig) else "prompts_per_step"
    if getattr(config, share) % processes:
        divisor = f"--num-processes {processes}" if launching else f"the number of processes ({processes})"
        raise R1labError(f"{share} = {getattr(config, share)} must divide by {divisor}")
    if isinstance(config, GRPOConfig) and config.dynamic_sampling and processes > 1:
        raise R1labError(f"dynamic_sampling runs in one process (got {processes}): use --num-processes 1 or "
                         "dynamic_sampling false")


def prepare_run(out: str, config, resume: bool, write: bool = True) -> tuple[Path, Path | None]:
    """The run directory and the checkpoint to resume from, if resuming. Everything is checked before the
    directory is made: the stage's inputs (`check_inputs`) and, on the main process (`write`), that a
    resumed checkpoint was trained with these settings, naming each change (`accept_settings` is the
    explicit way past). Then the main process takes the folder's writer lock (r1lab/runlock.py) and writes
    config.yaml: the settings the checkpoints are trained with."""
    out = Path(out)
    check_inputs(config)
    check_trackers(config.report_to)
    if write:
        lock_folder(out)             # one writer per run folder: a second one is refused, naming the holder
    checkpoint = find_checkpoint(out)
    if checkpoint is not None and not resume:
        raise R1labError(f"{out} already holds a checkpoint; pass --resume to continue it or choose another --out")
    if write:
        changed = changed_settings(_recorded(out), config) if checkpoint is not None else []
        if changed:
            raise R1labError(f"{out}: its checkpoint was trained with other settings ({'; '.join(changed)}); pass "
                             f"--allow-config-change to continue it with the new ones, or start afresh in another directory")
    out.mkdir(parents=True, exist_ok=True)
    if write:
        _record(out, config)
    return out, checkpoint


def accept_settings(out: str | Path, config) -> None:
    """Let a resumed run continue with changed settings (--allow-config-change): log the changes and record
    the new settings; restore_state then applies them (learning rate and weight decay included)."""
    out = Path(out)
    changed = changed_settings(_recorded(out), config) if find_checkpoint(out) is not None else []
    if changed:
        print(f"{out}: continuing with changed settings: {'; '.join(changed)}")
        _record(out, config)


def _recorded(out: Path) -> dict:
    path = out / "config.yaml"
    return read_yaml(path, "settings record") if path.is_file() else {}


def _record(out: Path, config) -> None:
    write_atomic(out / "config.yaml", yaml.safe_dump(asdict(config), sort_keys=False))


def load_policy(spec: str, checkpoint: Path | None, dtype: str, lora_rank: int, lora_alpha: int,
                gradient_checkpointing: bool):
    """The trained model (from the checkpoint when resuming), LoRA-wrapped if asked, on the device."""
    if lora_rank > 0:
        from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
        from peft.utils import load_peft_weights
        with quiet_transformers():
            model, tokenizer = models.load_model(spec, dtype)
        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
        if checkpoint is not None:
            set_peft_model_state_dict(model, load_peft_weights(str(checkpoint / "adapter")))
    else:
        with quiet_transformers():
            model, tokenizer = models.load_model(str(checkpoint) if checkpoint else spec, dtype)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()                                  # 5.25 deprecates the old name; kept where the new one is missing
        model.config.use_cache = False
    return model.to(device()), tokenizer


def make_optimizer(model, learning_rate: float, weight_decay: float, warmup_steps: int, schedule: str,
                   total_steps: int):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay, fused=fusable(params) or None)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if schedule == "linear":
            return max(0.0, 1 - progress)
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def fusable(params: list[torch.Tensor]) -> bool:
    """Whether AdamW's fused kernel (one pass over each parameter's state instead of one per operation: 0.04
    against 0.12 s a step for SmolLM2-135M on 2 Zen 4 cores) takes these: plain floating-point tensors on the
    CPU or a GPU. Sharded (DTensor) parameters keep the default (foreach)."""
    from torch.distributed.tensor import DTensor
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") and not isinstance(p, DTensor)
                                for p in params)


def zero_gradients(model) -> None:
    """A zero gradient for every trainable parameter that has none: what a backward pass through a loss of 0
    leaves, and what an optimiser step must see to be the same step (AdamW skips parameters without one)."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def training_state(step: int, optimizer, scheduler, generator: torch.Generator | None, optimizer_state: dict | None = None,
                   extras: dict | None = None) -> dict:
    """What resume restores. `extras`: name -> an object with state_dict() / load_state_dict() (grpo's prompt pool),
    saved under its name; restore_state gives it back."""
    return {"step": step, "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generator": generator.get_state() if generator is not None else None,
            **{name: extra.state_dict() for name, extra in (extras or {}).items()}}


def save_step(par, out: Path, model, tokenizer, step: int, optimizer, scheduler, generator: torch.Generator | None,
              keep: int = 0, total: int | None = None, extras: dict | None = None) -> None:
    """The checkpoint after `step` of `total`, with its model card, and with `keep` (save_total_limit) its
    numbered copy (r1lab/checkpoint.py); every process calls it. Sharded (FSDP2), every process first joins in
    gathering the full weights and the optimiser state (keyed by parameter name); the main process writes."""
    weights = optimizer_state = None
    if par.sharded:
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        whole = StateDictOptions(full_state_dict=True, cpu_offload=True)      # on the main process, in CPU memory
        weights = get_model_state_dict(model, options=whole)
        first = {}                                       # tied weights (embeddings and LM head) are saved once
        for name, p in model.named_parameters(remove_duplicate=False):
            if first.setdefault(id(p), name) != name:
                weights.pop(name, None)
        optimizer_state = get_optimizer_state_dict(model, optimizer, options=whole)
    if par.is_main:
        with quiet_transformers():
            save_checkpoint(out, model, tokenizer, training_state(step, optimizer, scheduler, generator, optimizer_state,
                                                                  extras),
                            weights, keep, model_card(out, step, total))


def end_step(par, out: Path, step: int, steps: int, save_every: int, model, tokenizer, optimizer, scheduler,
             generator: torch.Generator | None, keep: int = 0, extras: dict | None = None) -> None:
    """Every training stage's step tail: the checkpoint every `save_every` steps and after the last (`step`
    counts from 0), keeping `keep` numbered ones (save_total_limit), then every process waits for the others
    and chooses its thread count for the next step."""
    if (step + 1) % save_every == 0 or step + 1 == steps:
        save_step(par, out, model, tokenizer, step + 1, optimizer, scheduler, generator, keep, steps, extras)
    par.barrier()
    par.threads.adjust()            # torch's threads for the cores other processes leave free (r1lab/threads.py)


def restore_state(checkpoint: Path | None, optimizer, scheduler, generator: torch.Generator | None, model=None,
                  extras: dict | None = None) -> int:
    """Load optimiser moments, the position in the schedule and RNG states; the step to continue from (0
    when starting fresh). The learning rate and weight decay stay this run's (the saved states carry
    the old ones), so a resumed run never mixes settings. An optimiser state saved by parameter name (a
    sharded run's), or one loaded into a sharded `model`, goes through torch's distributed state-dict API. Each of
    `extras` (training_state's) that the checkpoint holds is loaded."""
    if checkpoint is None:
        return 0
    state = load_state(checkpoint)
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]   # lr, weight decay...
    saved = state["optimizer"]
    if isinstance(saved["param_groups"][0]["params"][0], str) or is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, by_name(saved, model), options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(saved)
    scheduler.load_state_dict(state["scheduler"])
    scheduler.base_lrs = [group["initial_lr"] for group in own]
    for group, hyper, factor in zip(optimizer.param_groups, own, scheduler.lr_lambdas):
        group.update(hyper, lr=hyper["initial_lr"] * factor(scheduler.last_epoch))
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():             # (checkpoints before 2026-12-04 lack it)
        for index, rng in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)
    if generator is not None and state["generator"] is not None:
        generator.set_state(state["generator"])
    for name, extra in (extras or {}).items():
        if name in state:
            extra.load_state_dict(state[name])
    return state["step"]


def by_name(saved: dict, model) -> dict:
    """An optimiser state keyed by parameter name: as saved by a sharded run, or converted from torch's
    numbering (the i-th trainable parameter, as `make_optimizer` lists them)."""
    if isinstance(saved["param_groups"][0]["params"][0], str):
        return saved
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return {"state": {names[i]: value for i, value in saved["state"].items()},
            "param_groups": [{**group, "params": [names[i] for i in group["params"]]} for group in saved["param_groups"]]}


class JsonlLog:
    """Append-only jsonl; on resume, rows from steps after the checkpoint (lost work) and a line cut short
    by a kill are dropped, and the file is rewritten atomically. Each row's numbers also go to `trackers`
    (`start_trackers`; none by default: TensorBoard only with report_to tensorboard), at the row's step."""

    def __init__(self, path: Path, resume_step: int, trackers: list = ()):
        self.path, self.trackers = Path(path), list(trackers)
        if self.path.exists():
            rows = [row for _, row in read_jsonl(self.path, torn_tail=True)]
            write_jsonl(self.path, [r for r in rows if r.get("step", 0) <= resume_step] if resume_step else [])

    def write(self, row: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"}
        for tracker in self.trackers:
            tracker.log(numbers, step=row.get("step", 0))

    def close(self) -> None:
        """End the trackers' runs (their files complete, their uploads done)."""
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}   # pip names


def check_trackers(report_to: str) -> None:
    """Every tracker `report_to` names is installed, as accelerate finds them; else one error with the pip
    command. Called before the stage writes anything."""
    from accelerate.tracking import get_available_trackers
    available = {str(tracker) for tracker in get_available_trackers()}
    missing = [name for name in report_targets(report_to) if name not in available]
    if missing:
        raise R1labError(f"report_to {report_to}: {', '.join(missing)} not installed; run: pip install "
                         f"{' '.join(PACKAGES[name] for name in missing)}   (or pip install 'r1lab[trackers]' for all)")


def start_trackers(out: Path, config) -> list:
    """accelerate's trackers for `config.report_to`, started, with the run's settings logged as hyperparameters
    (lists and mappings as JSON text); [] for none. On the main process only, as the metrics files."""
    from accelerate import PartialState
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    PartialState()                                   # accelerate's trackers log through its state
    run, project = "/".join(Path(out).resolve().parts[-2:]), "r1lab"     # run name: e.g. r1/grpo
    make = {"tensorboard": lambda cls: cls("tensorboard", str(out)),
            "wandb": lambda cls: cls(os.environ.get("WANDB_PROJECT", project), name=run, dir=str(out)),
            "trackio": lambda cls: cls(project, name=run),
            "mlflow": lambda cls: cls(experiment_name=project, run_name=run)}
    settings = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in asdict(config).items()}
    trackers = []
    for name in report_targets(config.report_to):
        tracker = make[name](LOGGER_TYPE_TO_CLASS[name])
        tracker.start()
        tracker.store_init_configuration(settings)
        trackers.append(tracker)
    return trackers


def finish_run(out: Path, log: JsonlLog | None) -> None:
    """A stage's last lines (main process; `log` is None elsewhere): its key figures, the last step's loss,
    reward and accuracy and the validation accuracy, and where its files are; its trackers are closed."""
    if log is None:
        return
    trackers = [tracker.name for tracker in log.trackers]
    log.close()
    last = last_row(out / "metrics.jsonl")
    figures = ", ".join(f"{key} {last[key]:.4g}" for key in ("loss", "reward", "accuracy")
                        if isinstance(last.get(key), (int, float)))
    lines = [f"{out}: finished at step {last.get('step', 0)}" + (f": {figures}" if figures else "")]
    validation = last_row(out / "validation.jsonl")
    if "val_accuracy" in validation:
        best = json.loads((out / "best" / "best.json").read_text()) if (out / "best" / "best.json").is_file() else None
        lines.append(f"  validation accuracy {validation['val_accuracy']:.4g} at step {validation['step']}"
                     + (f" (best {best['val_accuracy']:.4g} at step {best['step']}, in best/)" if best else ""))
    files = [("metrics", out / "metrics.jsonl"), ("samples", out / "samples.jsonl"), ("validation", out / "validation.jsonl"),
             ("checkpoint", out / "checkpoint"), ("best", out / "best"), ("tensorboard", out / "tensorboard"),
             ("wandb", out / "wandb")]
    lines += [f"  {name:11} {path}" for name, path in files if path.exists()]
    numbered = numbered_checkpoints(out)
    if numbered:
        lines.append(f"  {'kept':11} {', '.join(p.name for p in numbered)}")
    if trackers:
        lines.append(f"  {'trackers':11} {', '.join(trackers)}")
    lines.append(f"  {'report':11} r1lab report {out}   (writes {out / 'report.md'})")
    print("\n".join(lines))

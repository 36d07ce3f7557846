"""Recipes: an ordered list of stages, each stage's output (checkpoint or data) feeding the next.

    r1lab run recipes/r1.yaml [model=...] [task=...] [grpo.steps=50] ... [--num-processes N]

A recipe is YAML: `name`, shared defaults (`model`, `task`, `task_options`, `template`, `seed`) and
`stages`, each with a `name`, a `kind` and that kind's config fields (see r1lab/config.py):

    cold_start, rejection, distill, goal_directed -> data.jsonl      sft, grpo, compete -> checkpoint/
    eval       -> eval.json

Inputs are wired by name: `model: <stage>` (or `teacher:` for distill) takes that stage's checkpoint,
`model: base` the recipe's model, `data: <stage>` that stage's data.jsonl. Left out, a training
stage starts from the latest checkpoint before it (else the base model) and an SFT stage (or goal_directed) reads the
latest data before it; an eval stage without `models` compares the base with every checkpoint so far.
Stage `s` writes `runs/<name>/<s>/`; a finished stage leaves `.done` there, holding its settings (the
config fields but `out`, `save_every`, `sample_every`, which never change results), and is skipped
when the recipe runs again with the same settings; an interrupted training stage resumes from its last
checkpoint. A finished stage whose settings changed stops the run, naming each change, unless
`--allow-config-change` is given: then it runs again with the new ones (a training stage continues from
its checkpoint, any other starts afresh). Whenever a stage runs, the earlier outputs of the stages that read it, directly or
through others, are removed, so they are redone from the new output. Every stage is checked when the
recipe loads, before any model does: unknown kinds, keys and references (including a later stage's),
and missing input files, are errors naming the file, the stage and the key.

With `--num-processes N` each training stage (sft, grpo, compete) runs data-parallel in N processes, as
`r1lab train KIND --num-processes N` does (r1lab/distributed.py): its config goes to the launched
processes as a YAML file and it always resumes from its checkpoint if one is there. The other stages
run in this process, on its device. Whether each training stage's batch divides among N processes is
checked when the recipe loads, with everything else.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1lab import R1labError, eta, is_file
from r1lab.config import (ColdStartConfig, CompeteConfig, DistillConfig, EvalConfig, GoalDirectedConfig, GRPOConfig,
                          RejectionConfig, SFTConfig, changed_settings, load_config, settings)
from r1lab.data import write_atomic
from r1lab.schema import field_value, folder_name, read_yaml, short_repr
from r1lab.training import check_trackers, check_world
from r1lab.trl_names import translate_keys


def trl_keys(values: dict, kind: str, fields: set[str], where: str) -> dict:
    """A stage's keys with TRL's names as r1lab's (r1lab/trl_names.py), a note printed for each (first process only)."""
    values, notes = translate_keys(values, kind, fields, where)
    if int(os.environ.get("RANK", "0")) == 0:
        for note in notes:
            print(f"r1lab: note: {note}", file=sys.stderr)
    return values

KINDS = {  # kind -> (config class, what the stage produces)
    "cold_start": (ColdStartConfig, "data"), "sft": (SFTConfig, "checkpoint"), "grpo": (GRPOConfig, "checkpoint"),
    "compete": (CompeteConfig, "checkpoint"),
    "rejection": (RejectionConfig, "data"), "goal_directed": (GoalDirectedConfig, "data"), "distill": (DistillConfig, "data"), "eval": (EvalConfig, "eval"),
}
SHARED = ("model", "task", "task_options", "template", "seed")
TOP_LEVEL = ("name", "runs_dir", "stages") + SHARED


@dataclass(frozen=True)
class Stage:
    name: str
    kind: str
    config: object      # the kind's frozen config, inputs resolved to paths
    out: Path
    inputs: tuple[str, ...]   # the earlier stages whose outputs it reads


def _set_override(recipe: dict, key: str, value: str, path: Path) -> None:
    stage_name, dot, field = key.partition(".")
    if not dot:
        if key not in TOP_LEVEL or key == "stages":
            raise R1labError(f"override {key}={value}: unknown recipe key; valid: {', '.join(TOP_LEVEL[:2] + SHARED)} "
                             f"or <stage>.<key>")
        recipe[key] = yaml.safe_load(value) if key == "task_options" else value
        return
    for stage in recipe.get("stages", []):
        if stage.get("name") == stage_name:
            stage[field] = value
            return
    raise R1labError(f"override {key}={value}: {path} has no stage named {stage_name!r}")


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> list[Stage]:
    """The recipe's stages with their configs, all checked, nothing loaded."""
    path = Path(path)
    recipe = read_yaml(path, "recipe")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("stages"), list) or not recipe["stages"]:
        raise R1labError(f"{path}: a recipe is a mapping with a non-empty 'stages' list")
    for key, value in (overrides or {}).items():
        _set_override(recipe, key, value, path)
    unknown = sorted(set(recipe) - set(TOP_LEVEL))
    if unknown:
        raise R1labError(f"{path}: unknown recipe key(s) {unknown}; valid: {', '.join(TOP_LEVEL)}")
    for key in ("name", "runs_dir", "model", "task", "template"):
        if key in recipe and not isinstance(recipe[key], str):
            raise R1labError(f"{path}: recipe key {key!r} must be a string, got {short_repr(recipe[key])}")
    wiring = Wiring(path, recipe)
    return [wiring.stage(number, raw) for number, raw in enumerate(recipe["stages"], 1)]


class Wiring:
    """Reads a recipe's stages in order, resolving each input named by a stage to the path of what that
    earlier stage writes (`produced`), and recording which stages each one reads."""

    def __init__(self, path: Path, recipe: dict):
        self.path, self.recipe = path, recipe
        self.runs = Path(recipe.get("runs_dir", "runs")) / folder_name(recipe.get("name", path.stem),
                                                                      f"{path}: recipe key 'name'")
        self.base = recipe.get("model", "smollm2-135m")
        self.names = {str(raw.get("name", f"stage{number}")) for number, raw in enumerate(recipe["stages"], 1)
                      if isinstance(raw, dict)}
        self.produced: dict[str, str] = {}            # stage name -> what it produces

    def stage(self, number: int, raw) -> Stage:
        if not isinstance(raw, dict):
            raise R1labError(f"{self.path}, stage {number}: expected a mapping with 'name' and 'kind'")
        values = dict(raw)
        name = folder_name(values.pop("name", f"stage{number}"), f"{self.path}, stage {number}: key 'name'")
        kind = values.pop("kind", None)
        where = f"{self.path}, stage {name!r}"
        if not isinstance(kind, str) or kind not in KINDS:
            raise R1labError(f"{where}: unknown kind {short_repr(kind)}; valid kinds: {', '.join(KINDS)}")
        if name in self.produced or name == "base":
            raise R1labError(f"{where}: the stage name is used twice (or is the reserved name 'base')")
        cls, output = KINDS[kind]
        fields = {f.name for f in dataclasses.fields(cls)}
        values = trl_keys(values, kind, fields, where)
        for key in ("model", "teacher", "data", "models"):       # read below, before load_config checks the rest
            if key in values and key in fields:
                try:
                    values[key] = field_value(cls, key, values[key])
                except R1labError as e:
                    raise R1labError(f"{where}: {e}") from None
        for key in SHARED:
            if key in fields and key not in values and key in self.recipe and key != "model":
                values[key] = self.recipe[key]
        inputs: list[str] = []
        if "model" in fields and kind != "eval":
            values["model"] = self.checkpoint_of(values.get("model", self.latest("checkpoint") or "base"), "model", where, inputs)
        if kind == "distill" and "teacher" in values:
            values["teacher"] = self.checkpoint_of(values["teacher"], "teacher", where, inputs)
        if kind in ("sft", "goal_directed"):
            values["data"] = self.data_of(values.get("data", self.latest("data")), where, inputs)
        if kind == "eval":
            models = values.get("models") or ["base"] + [n for n in self.produced if self.produced[n] == "checkpoint"]
            values["models"] = [self.checkpoint_of(m, "models", where, inputs) for m in models]
        values["out"] = str(self.runs / name)
        try:
            config = load_config(cls, None, values)
            if "report_to" in fields:
                check_trackers(config.report_to)          # a missing tracker is found now, not after earlier stages ran
        except R1labError as e:
            raise R1labError(f"{where}: {e}") from None
        self.produced[name] = output
        return Stage(name, kind, config, self.runs / name, tuple(inputs))

    def latest(self, what: str) -> str | None:
        """The last stage so far that produces `what`."""
        return next((n for n in reversed(list(self.produced)) if self.produced[n] == what), None)

    def checkpoint_of(self, ref: str, key: str, where: str, inputs: list[str]) -> str:
        """A model reference: 'base', an earlier stage's checkpoint (recorded in `inputs`), or a model spec."""
        if ref == "base":
            return self.base
        if ref in self.produced:
            if self.produced[ref] != "checkpoint":
                raise R1labError(f"{where}, key {key!r}: stage {ref!r} produces {self.produced[ref]}, not a checkpoint")
            inputs.append(ref)
            return str(self.runs / ref / "checkpoint")
        if ref in self.names:
            raise R1labError(f"{where}, key {key!r}: stage {ref!r} comes later in the recipe (or is this one); "
                             f"a stage reads only earlier stages' outputs")
        return ref

    def data_of(self, data: str | None, where: str, inputs: list[str]) -> str:
        """A data reference: an earlier stage's data.jsonl (recorded in `inputs`) or an existing file."""
        if data is None:
            raise R1labError(f"{where}, key 'data': no earlier stage produces data; name a jsonl file")
        if data in self.produced:
            if self.produced[data] != "data":
                raise R1labError(f"{where}, key 'data': stage {data!r} produces {self.produced[data]}, not data")
            inputs.append(data)
            return str(self.runs / data / "data.jsonl")
        if not is_file(data):
            raise R1labError(f"{where}, key 'data': {data} is neither an earlier stage nor an existing file")
        return data


def check_processes(kind: str, config, num_processes: int) -> None:
    """A training stage can be launched in `num_processes` data-parallel processes (training.check_world),
    and this process is not itself one of a launch."""
    if num_processes < 1:
        raise R1labError(f"--num-processes must be >= 1, got {num_processes}")
    if os.environ.get("WORLD_SIZE"):
        raise R1labError("--num-processes inside an accelerate/torchrun launch: give the process count to one of them only")
    check_world(config, num_processes)


def launch_stage(stage: Stage, num_processes: int) -> None:
    """Run a training stage in `num_processes` processes (`r1lab train KIND --config FILE --resume`, launched
    by accelerate) and wait for it; an error if any process failed. This process's cached GPU memory (an
    earlier eval's) is given back first: the launched processes need the GPUs."""
    import torch

    from r1lab.distributed import launch_command
    from r1lab.runlock import die_with_parent
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory(prefix="r1lab-stage-") as folder:
        path = Path(folder) / f"{stage.name}.yaml"
        path.write_text(yaml.safe_dump(dataclasses.asdict(stage.config), sort_keys=False), encoding="utf-8")
        status = subprocess.call(launch_command(num_processes, ["train", stage.kind, "--config", str(path), "--resume"]),
                                 preexec_fn=die_with_parent)
    if status != 0:
        raise R1labError(f"stage {stage.name!r} failed in its {num_processes} processes (exit status {status}); "
                         "its output is above")


def run_stage(stage: Stage) -> None:
    from r1lab.algorithms.compete import train_compete
    from r1lab.algorithms.distill import run_distill
    from r1lab.algorithms.goal_directed import write_goal_directed
    from r1lab.algorithms.grpo import train_grpo
    from r1lab.algorithms.rejection import run_rejection
    from r1lab.algorithms.sft import train_sft
    from r1lab.cold_start import write_cold_start
    from r1lab.evaluate import run_eval

    c = stage.config
    if stage.kind == "cold_start":
        write_cold_start(c.task, c.n, str(stage.out / "data.jsonl"), c.template, c.seed, c.task_options, c.tools)
    elif stage.kind == "goal_directed":
        write_goal_directed(c.data, str(stage.out / "data.jsonl"), c.task, c.template, tuple(c.augment))
    elif stage.kind in ("sft", "grpo", "compete"):
        {"sft": train_sft, "grpo": train_grpo, "compete": train_compete}[stage.kind](c, resume=True)
    else:
        {"rejection": run_rejection, "distill": run_distill, "eval": run_eval}[stage.kind](c)


def readers(stages: list[Stage], name: str) -> list[Stage]:
    """The stages that read stage `name`'s output, directly or through others."""
    read, found = {name}, []
    for stage in stages:
        if read & set(stage.inputs):
            read.add(stage.name)
            found.append(stage)
    return found


def run_recipe(path: str, overrides: dict[str, str] | None = None, allow_config_change: bool = False,
               num_processes: int | None = None) -> Path:
    """Run every unfinished stage in order (a finished one with changed settings only when allowed), the
    training stages in `num_processes` processes if given; the report path."""
    from r1lab.report import write_report
    from r1lab.runlock import lock_folder
    from r1lab.training import accept_settings

    stages = load_recipe(path, overrides)
    for stage in stages:
        if num_processes is not None and KINDS[stage.kind][1] == "checkpoint":
            try:
                check_processes(stage.kind, stage.config, num_processes)
            except R1labError as e:
                raise R1labError(f"{path}, stage {stage.name!r}: {e}") from None
    lock_folder(stages[0].out.parent)        # one `r1lab run` per run folder (each stage's own writer locks its own)
    began = time.monotonic()
    runs = stages[0].out.parent               # each stage's settings, compared with earlier runs' timing.json
    timed = {stage.name: eta.fingerprint(settings(stage.config), runs) for stage in stages}
    for number, stage in enumerate(stages, 1):
        done = stage.out / ".done"
        if done.exists():
            recorded = read_yaml(done, "stage record")
            changed = changed_settings(recorded, stage.config) if recorded else []   # an empty .done predates the record
            if not changed:
                print(f"[{stage.name}] finished earlier, skipped")
                continue
            if not allow_config_change:
                raise R1labError(f"{path}, stage {stage.name!r}: finished earlier with other settings ({'; '.join(changed)}); "
                                 f"pass --allow-config-change to run it again with the new ones, or delete {stage.out} "
                                 f"to redo it from scratch")
            print(f"[{stage.name}] finished earlier with other settings ({'; '.join(changed)}): running it again")
            if KINDS[stage.kind][1] == "checkpoint":
                done.unlink()                    # training continues from its checkpoint (accept_settings below)
            else:
                shutil.rmtree(stage.out)         # afresh: no earlier output (a distill cache, eval rows) is mixed in
        for reader in readers(stages, stage.name):
            if reader.out.exists():
                print(f"[{reader.name}] reads {stage.name!r}, which runs now: removing its earlier output {reader.out}")
                shutil.rmtree(reader.out)
        if allow_config_change and KINDS[stage.kind][1] == "checkpoint":
            accept_settings(stage.out, stage.config)
        launched = num_processes is not None and KINDS[stage.kind][1] == "checkpoint"
        later = [eta.previous(runs.parent, s.name, s.kind, timed[s.name]) for s in stages[number:]
                 if not (s.out / ".done").exists()]
        print(f"[{stage.name}] {stage.kind} -> {stage.out}" + (f" ({num_processes} processes)" if launched else "")
              + f"  (stage {number} of {len(stages)}, recipe time so far {eta.clock(time.monotonic() - began)})", flush=True)
        resumed, started = stage.out.exists() and any(stage.out.iterdir()), time.monotonic()
        eta.set_later(later)
        try:
            if launched:
                launch_stage(stage, num_processes)
            else:
                run_stage(stage)
        finally:
            eta.set_later(None)
        stage.out.mkdir(parents=True, exist_ok=True)
        eta.record(stage.out, stage.kind, timed[stage.name], time.monotonic() - started, resumed)
        write_atomic(done, yaml.safe_dump(settings(stage.config), sort_keys=False))
    return write_report(str(stages[0].out.parent))

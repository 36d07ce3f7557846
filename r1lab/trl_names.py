"""TRL's option names, understood: users who come from TRL's GRPOConfig / SFTConfig (and the TrainingArguments and
ModelConfig under them) can type the names they know.

    r1lab train grpo --num-generations 8 --loss-type dapo --bf16
    r1lab: note: --num-generations is TRL's name; r1lab calls it --samples-per-prompt
    r1lab: note: --loss-type is TRL's name; r1lab calls it --loss-aggregation (TRL's dapo is r1lab's token)
    r1lab: note: --bf16 is TRL's name; r1lab calls it --mixed-precision (TRL's true is r1lab's bf16)

Each name in TRL_NAMES either works as an alias of an r1lab option (rewritten before parsing, with a one-line
note), or is refused with what r1lab does instead: never a "did you mean" to an unrelated option. A name means
the same as in TRL where it is an alias; where TRL's values differ the table maps them, and a TRL value with no
counterpart is refused naming the ones that have. Options r1lab shares with TRL (learning_rate, beta, epsilon,
epsilon_high, temperature, top_p, seed, weight_decay, warmup_steps, max_grad_norm, gradient_checkpointing,
lora_alpha, full_determinism, SFT's max_length) need no entry; scale_rewards has one for TRL's string values.
Every command's options are rewritten (`r1lab eval --max-completion-length 64` too), and so are the keys of a
recipe's stage and of a `--config` file (`translate_keys`: `num_generations: 8` is `samples_per_prompt: 8`).
"""
from __future__ import annotations

from typing import NamedTuple

from r1lab import R1labError

BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class TrlName(NamedTuple):
    ours: str | None                   # the r1lab field it is an alias of; None: refused, `note` says what instead
    note: str = ""                     # said with the alias; for a refusal, what to do in r1lab
    values: dict | None = None         # TRL value -> r1lab value where they differ (others refused); None: as given
    flag: bool = False                 # TRL accepts it bare (`--bf16` = `--bf16 true`)
    kinds: tuple = ()                  # the stage kinds this row is for; () = any (the first matching row counts)


def on_off(true: str, false: str) -> dict:
    """A boolean TRL option's values (true/false, 1/0, yes/no) as two r1lab values."""
    return {word: true if value else false for word, value in BOOL.items()}


NOT_BUILT = "not built"
TRL_NAMES: dict[str, tuple[TrlName, ...]] = {
    # GRPOConfig
    "num_generations": (TrlName("samples_per_prompt"),),
    "max_completion_length": (TrlName("max_new_tokens"),),
    "num_iterations": (TrlName("updates_per_batch"),),
    "loss_type": (TrlName("loss_aggregation", values={"grpo": "sample", "dapo": "token", "dr_grpo": "constant"}),),
    "scale_rewards": (TrlName("scale_rewards", values={"group": "true", "none": "false"}),),
    "mask_truncated_completions": (TrlName("mask_truncated", flag=True),),
    "importance_sampling_level": (TrlName("ratio_level"),),
    "use_vllm": (TrlName("engine", values=on_off("vllm", "hf"), flag=True),),
    "vllm_gpu_memory_utilization": (TrlName("vllm_gpu_memory"),),
    "vllm_importance_sampling_correction": (TrlName("importance_sampling", values=on_off("on", "off"), flag=True),),
    "vllm_importance_sampling_cap": (TrlName("importance_sampling_cap"),),
    "reward_funcs": (TrlName("rewards", "names or package.module:function, each =weight if not 1"),),
    "max_steps": (TrlName("steps", "each step samples a batch, then updates_per_batch optimiser steps", kinds=("grpo",)),
                  TrlName(None, "r1lab's training stages count --steps (grpo), --rounds (compete) or --epochs (sft)")),
    "max_prompt_length": (TrlName(None, "r1lab never truncates prompts (a task's questions are short): leave it out"),),
    "reward_weights": (TrlName(None, "r1lab writes the weights into --rewards, e.g. --rewards accuracy=1,format=0.5"),),
    "steps_per_generation": (TrlName(None, "r1lab samples each step's batch once (prompts_per_step x samples_per_prompt "
                                           "completions) and takes --updates-per-batch passes over it"),),
    "generation_batch_size": (TrlName(None, "r1lab calls it --prompts-per-step x --samples-per-prompt completions"),),
    "vllm_mode": (TrlName(None, "r1lab runs vLLM inside the training process (TRL's colocate); server mode: " + NOT_BUILT),),
    "top_k": (TrlName(None, f"{NOT_BUILT}: r1lab samples with --temperature and --top-p"),),
    "min_p": (TrlName(None, f"{NOT_BUILT}: r1lab samples with --temperature and --top-p"),),
    "repetition_penalty": (TrlName(None, f"{NOT_BUILT}: r1lab samples with --temperature and --top-p"),),
    "delta": (TrlName(None, f"{NOT_BUILT}: r1lab clips with --epsilon and --epsilon-high"),),
    "sync_ref_model": (TrlName(None, f"{NOT_BUILT}: the reference stays the initial model"),),
    "log_completions": (TrlName(None, "r1lab writes example completions to samples.jsonl every --sample-every steps"),),
    "disable_dropout": (TrlName(None, "r1lab always trains the policy without dropout"),),
    # SFTConfig
    "num_train_epochs": (TrlName("epochs", kinds=("sft",)),
                         TrlName(None, "only r1lab's SFT has epochs; GRPO runs --steps and compete --rounds, each on "
                                       "fresh problems")),
    "max_seq_length": (TrlName("max_length", "r1lab skips longer rows and counts them; TRL truncates", kinds=("sft",)),),
    "dataset_text_field": (TrlName(None, "r1lab's SFT rows are prompt and completion fields of a jsonl file (--data)"),),
    "completion_only_loss": (TrlName(None, "r1lab's SFT loss is always on the completion only"),),
    "assistant_only_loss": (TrlName(None, "r1lab's SFT loss is always on the completion only"),),
    "packing": (TrlName("packed", "r1lab packs a micro-batch's rows into one, each attending only to itself", flag=True),),
    "padding_free": (TrlName("packed", "r1lab packs a micro-batch's rows into one, each attending only to itself; "
                                       "unpacked rows run in length buckets, each padded to its own longest", flag=True),),
    # TrainingArguments
    "output_dir": (TrlName("out"),),
    "per_device_train_batch_size": (TrlName("micro_batch_size", "sequences per forward/backward pass, per device"),),
    "gradient_accumulation_steps": (
        TrlName(None, "r1lab derives it: --batch-size sequences per optimiser step, --micro-batch-size at a time per "
                      "process (accumulation = batch_size / (micro_batch_size x processes))", kinds=("sft",)),
        TrlName(None, "r1lab derives it: a step's --prompts-per-step x --samples-per-prompt sequences, "
                      "--micro-batch-size at a time per process, gradients accumulated over all of them")),
    "bf16": (TrlName("mixed_precision", values=on_off("bf16", "no"), flag=True),),
    "fp16": (TrlName(None, "r1lab trains in fp32 or under bf16 autocast (--mixed-precision bf16); fp16: " + NOT_BUILT),),
    "report_to": (TrlName(None, "only r1lab's training stages (r1lab train grpo|sft|compete) send metrics to trackers "
                                "(--report-to); every stage writes its files under --out"),),
    "lr_scheduler_type": (TrlName("lr_schedule", values={"constant": "constant", "constant_with_warmup": "constant",
                                                         "linear": "linear", "cosine": "cosine"}),),
    "warmup_ratio": (TrlName(None, "r1lab counts warm-up in steps: --warmup-steps"),),
    "save_steps": (TrlName("save_every"),),
    "logging_steps": (TrlName(None, "r1lab logs every step to metrics.jsonl"),),
    "resume_from_checkpoint": (TrlName(None, "r1lab calls it --resume (from --out's last checkpoint)"),),
    "push_to_hub": (TrlName(None, f"{NOT_BUILT}: the checkpoint is a Hugging Face folder, --out/checkpoint; "
                                  "upload it with `huggingface-cli upload`"),),
    "optim": (TrlName(None, "r1lab trains with AdamW (--learning-rate, --weight-decay)"),),
    "deepspeed": (TrlName(None, "r1lab shards with FSDP2 (--fsdp true); DeepSpeed is refused"),),
    # ModelConfig and the trl CLI's script arguments
    "model_name_or_path": (TrlName("model"),),
    "torch_dtype": (TrlName("dtype"),),
    "lora_r": (TrlName("lora_rank"),),
    "use_peft": (TrlName(None, "r1lab trains LoRA adapters when --lora-rank > 0 (TRL's lora_r)"),),
    "lora_dropout": (TrlName(None, "r1lab trains without dropout, adapters included"),),
    "dataset_name": (TrlName(None, "r1lab calls it --task: --task hf:NAME for a Hugging Face dataset, or arithmetic, "
                                   "jsonl:PATH, reasoning-gym:NAME (`r1lab tasks`); SFT reads --data PATH.jsonl"),),
    "dataset_config": (TrlName(None, "r1lab writes it into --task: --task hf:NAME:CONFIG"),),
}


def option(field: str) -> str:
    """A field as its command-line option: samples_per_prompt -> --samples-per-prompt."""
    return "--" + field.replace("_", "-")


def row_for(name: str, kind: str | None) -> TrlName | None:
    """TRL_NAMES' row for a TRL field name and a stage kind (None: any), or None if TRL has no such name here."""
    return next((row for row in TRL_NAMES.get(name, ()) if not row.kinds or kind in row.kinds), None)


def mapped(name: str, row: TrlName, value: str) -> str:
    """TRL's value as r1lab's (r1lab's own values, and true/false for an option both share, as given); a value
    with no counterpart is refused naming those that have."""
    key = value.strip().lower()
    if row.values is None or value in row.values.values() or row.ours == name and key in BOOL:
        return value
    if key not in row.values:
        pairs = ", ".join(f"{trl} -> {ours}" for trl, ours in row.values.items() if trl not in ("1", "0", "yes", "no"))
        raise R1labError(f"{option(name)} {value}: TRL's value has no counterpart in r1lab's {option(row.ours)} "
                         f"(TRL -> r1lab: {pairs})")
    return row.values[key]


def translate(argv: list[str], options: set[str], kind: str | None, where: str) -> tuple[list[str], list[str]]:
    """A command's arguments with TRL's options as r1lab's (`--num-generations 8` -> `--samples-per-prompt=8`) and a
    note for each; a TRL name with no counterpart raises R1labError saying what r1lab does instead. `options`: the
    command's long options (one of them is TRL's too only for its values: `--scale-rewards group`); `kind`: the
    stage kind of `r1lab train KIND` (rows for one kind apply there only); `where`: the command, for errors."""
    out, notes, i = [], [], 0
    while i < len(argv):
        start, token, i = i, argv[i], i + 1
        name, eq, value = token.partition("=")
        field = name[2:].replace("-", "_")
        row = row_for(field, kind) if name.startswith("--") else None
        if row is None or name in options and (row.ours != field or row.values is None):
            out.append(token)
            continue
        if not eq and i < len(argv) and (argv[i].lower() in BOOL if row.flag else not argv[i].startswith("--")):
            value, eq, i = argv[i], "=", i + 1
        elif not eq and row.flag:
            value, eq = "true", "="
        if row.ours is None:
            raise R1labError(f"{name} is TRL's name; {row.note}")
        if option(row.ours) not in options:
            raise R1labError(f"{name} is TRL's name for r1lab's {option(row.ours)}, which {where} has not; see {where} --help")
        ours = mapped(field, row, value) if eq else value
        said = f"TRL's {value} is r1lab's {ours}" if ours != value else ""
        if row.ours == field and not said:              # r1lab's own option and value: as given
            out += argv[start:i]
            continue
        if row.ours == field:
            notes.append(f"{name} {value}: {said}")
        else:
            notes.append(f"{name} is TRL's name; r1lab calls it {option(row.ours)}"
                         + (f" ({'; '.join(t for t in (said, row.note) if t)})" if said or row.note else ""))
        out.append(option(row.ours) + (f"={ours}" if eq else ""))
    return out, notes


def translate_keys(values: dict, kind: str, fields: set[str], where: str) -> tuple[dict, list[str]]:
    """A stage's options (a recipe stage, a --config file) with TRL's keys as r1lab's and a note for each, as
    `translate` does for options; `fields`: the stage config's field names; `where`: the file and stage, for errors."""
    out, notes = {}, []
    for key, value in values.items():
        row = row_for(key, kind) if isinstance(key, str) else None
        if row is None or key in fields and (row.ours != key or row.values is None):
            out[key] = value
            continue
        if row.ours is None:
            raise R1labError(f"{where}: {key} is TRL's name; {row.note}")
        if row.ours not in fields:
            raise R1labError(f"{where}: {key} is TRL's name for r1lab's {row.ours}, which a {kind} stage has not")
        if row.ours != key and row.ours in values:
            raise R1labError(f"{where}: both {key} (TRL's name) and {row.ours} (r1lab's) are given; keep one")
        ours, shown = value, str(value).lower() if isinstance(value, bool) else str(value)   # shown: as YAML wrote it
        if row.values is not None and isinstance(value, (str, bool, int)):
            try:
                ours = mapped(key, row, shown)
            except R1labError as e:
                raise R1labError(f"{where}: {e}") from None
            ours = value if ours == shown else ours
        said = f"TRL's {shown} is r1lab's {ours}" if ours != value else ""
        if row.ours != key:
            notes.append(f"{where}: {key} is TRL's name; r1lab calls it {row.ours}"
                         + (f" ({'; '.join(t for t in (said, row.note) if t)})" if said or row.note else ""))
        elif said:
            notes.append(f"{where}: {key}: {shown}: {said}")
        out[row.ours] = ours
    return out, notes

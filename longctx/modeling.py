"""Loading a causal LM for evaluation or training: any checkpoint source, a LoRA adapter, the fastest attention."""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

from longctx import rope_methods
from longctx.errors import UsageError
from longctx.sources import resolve_model_dir


def flash_attn_available() -> bool:
    """flash-attn is an optional GPU extra. transformers' own probe decides, so we pick flash_attention_2
    exactly when transformers would accept it (package, version and a CUDA device), never on a guess."""
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


@contextlib.contextmanager
def peft_deprecations_hidden():
    """peft reads transformers' deprecated `is_gradient_checkpointing` itself when it wraps a model (its call,
    not ours): keep longctx's output free of a FutureWarning its user cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def pick_attn_implementation(device: str) -> str:
    """flash_attention_2 on CUDA when flash-attn is installed, else PyTorch SDPA (its flash kernel on GPU)."""
    if str(device).startswith("cuda") and flash_attn_available():
        return "flash_attention_2"
    return "sdpa"


def pick_device(device: str | None = None) -> str:
    """--device, checked against this machine before any model loads; default cuda when available."""
    import torch

    if not device:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise UsageError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(
                f"--device {device}: no CUDA GPU is usable here (torch {torch.__version__}): use --device cpu"
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available here: use --device cpu")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: longctx runs on cpu, cuda or mps")
    return device


def pick_dtype(device: str, dtype: str | None = None):
    """bf16 on GPU, fp32 on CPU unless asked otherwise."""
    import torch

    if dtype:
        try:
            return {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
                    "fp32": torch.float32, "float32": torch.float32}[dtype]
        except KeyError:
            raise UsageError(f"unknown dtype {dtype!r}: use bf16, fp16 or fp32") from None
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def check_adapter(adapter_dir: Path, *, allow_pickle: bool = False) -> None:
    """A LoRA adapter directory is loadable without running code: valid adapter_config.json, safetensors
    weights (pickle only with allow_pickle) that are not truncated."""
    from longctx.checkpoint_files import check_regular_files, check_safetensors

    check_regular_files(adapter_dir, " in the adapter folder")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(
            f"{adapter_dir}/adapter_config.json is not valid JSON: repair or re-save the adapter"
        ) from None
    if not isinstance(config, dict):
        raise UsageError(
            f"{adapter_dir}/adapter_config.json does not hold a JSON object: repair or re-save the adapter"
        )
    safe = adapter_dir / "adapter_model.safetensors"
    if safe.is_file():
        check_safetensors(safe)
    elif (adapter_dir / "adapter_model.bin").is_file():
        if not allow_pickle:
            raise UsageError(
                f"{adapter_dir} has its adapter weights only as pickle (adapter_model.bin), which can run "
                "code on load: re-save it as safetensors (peft: save_pretrained(..., safe_serialization=True))"
            )
    else:
        raise UsageError(f"{adapter_dir} has adapter_config.json but no adapter weights (adapter_model.safetensors)")


def from_pretrained_checked(model_dir: str | Path, **kwargs):
    """AutoModelForCausalLM.from_pretrained, refusing weights that do not match the config: a missing tensor
    would be randomly initialised and an unexpected one dropped, silently (a 3-layer config over 2-layer
    weights evaluates a random third layer). One line naming them instead; shape mismatches likewise."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report is a table on stderr; the error below says what matters
    try:
        model, info = AutoModelForCausalLM.from_pretrained(model_dir, output_loading_info=True, **kwargs)
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc) and "size mismatch" not in str(exc):
            raise
        raise UsageError(f"{model_dir}: some weights have other shapes than config.json gives them: the config does "
                         "not belong to these weights; repair it or re-download the checkpoint") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    problems = [(what, sorted(info.get(key) or [])) for what, key in
                (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("mismatched", "mismatched_keys"))]
    problems = [(what, [str(k[0] if isinstance(k, tuple) else k) for k in keys]) for what, keys in problems if keys]
    if problems:
        said = "; ".join(f"{len(keys)} {what} ({', '.join(keys[:3])}{', …' if len(keys) > 3 else ''})"
                         for what, keys in problems)
        raise UsageError(f"{model_dir}: the weights do not match config.json: {said}; repair the config or "
                         "re-download the checkpoint")
    return model


def load_tokenizer(model_dir: str | Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"no usable tokenizer in {model_dir} ({type(exc).__name__}): copy the tokenizer files of the base model "
            "there"
        ) from None


def source_dirs(source: str | Path, *, base_model: str | None = None, trust_remote_code: bool = False,
                allow_pickle: bool = False) -> tuple[Path, Path | None]:
    """(checked checkpoint dir, adapter dir or None) of --model: what `load_model` loads, found without loading."""
    if not is_adapter_dir(source):
        return resolve_model_dir(source, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), None
    adapter_dir = Path(source)
    check_adapter(adapter_dir, allow_pickle=allow_pickle)
    base = base_model or json.loads((adapter_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{adapter_dir} is a LoRA adapter without a base model: pass --base-model")
    return resolve_model_dir(base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code), adapter_dir


def load_model(source: str | Path, *, device: str | None = None, dtype: str | None = None,
               attn_implementation: str | None = None, base_model: str | None = None,
               trust_remote_code: bool = False, allow_pickle: bool = False,
               dirs: tuple[Path, Path | None] | None = None):
    """(model, tokenizer, model_dir) for a checkpoint, a GGUF, a Hub id, or a LoRA adapter directory.

    An adapter directory loads its base (`base_model` or the adapter's `base_model_name_or_path`) and is
    merged into it, so evaluation runs at the speed of a plain model. `dirs`: `source_dirs(source, ...)` when
    the caller resolved and checked them already.
    """
    device = pick_device(device)
    torch_dtype = pick_dtype(device, dtype)
    model_dir, adapter_dir = dirs or source_dirs(source, base_model=base_model, trust_remote_code=trust_remote_code,
                                                 allow_pickle=allow_pickle)
    attn = attn_implementation or pick_attn_implementation(device)
    model = from_pretrained_checked(model_dir, dtype=torch_dtype, attn_implementation=attn,
                                    trust_remote_code=trust_remote_code)
    tokenizer_dir = adapter_dir if adapter_dir and (adapter_dir / "tokenizer_config.json").exists() else model_dir
    tokenizer = load_tokenizer(tokenizer_dir, trust_remote_code=trust_remote_code)
    if adapter_dir is not None:
        try:
            from peft import PeftModel
        except ImportError:
            raise UsageError("loading a LoRA adapter needs peft: pip install 'longctx[eval]'") from None
        with peft_deprecations_hidden():
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    model.to(device).eval()
    return model, tokenizer, Path(model_dir)


def reset_rope_state(model) -> None:
    """Put every rotary embedding back to the checkpoint's own frequencies before a fresh forward.

    transformers' dynamic rope (and only it: `RopeMethod.stateful`) keeps state: a long input grows `inv_freq`
    and it stays grown for every later input longer than the trained length (it resets only below it). A model
    loaded once and run at 16K, then 10K, would score the 10K input with the 16K base. Calling this before each forward
    that starts at position 0 makes every score independent of what ran before. Other rope types are left
    alone (their `inv_freq` never changes). Works with transformers 4 and 5, and with per-layer-type
    prefixes (`sliding_attention_original_inv_freq`, …).
    """
    for module in model.modules():
        rope_type = getattr(module, "rope_type", None)
        types = rope_type.values() if isinstance(rope_type, dict) else [rope_type]
        if not any(isinstance(t, str) and getattr(rope_methods.for_rope_type(t), "stateful", False) for t in types):
            continue
        original_length = getattr(module, "original_max_seq_len", None)
        for name in [n for n, _ in module.named_buffers(recurse=False)] + list(vars(module)):
            if not name.endswith("original_inv_freq"):
                continue
            original = getattr(module, name, None)
            prefix = name[: -len("original_inv_freq")]
            if original is None or not hasattr(original, "clone"):
                continue
            current = getattr(module, f"{prefix}inv_freq", None)
            if current is not None and current.shape == original.shape and bool((current == original).all()):
                continue
            # a copy: longrope-style updates write into inv_freq in place and must never reach the original
            module.register_buffer(f"{prefix}inv_freq", original.detach().clone(), persistent=False)
            if original_length is not None:
                setattr(module, f"{prefix}max_seq_len_cached", original_length)

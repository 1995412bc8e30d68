"""Prepare, and check here, what bench/gpu_check.py needs on a lent GPU machine (`make gpu-wheels`).

The lent machine (an H200: python 3.12, torch 2.11, transformers 5.17, nothing downloadable) cannot
run OpenUnlearning d3d7cf9 as it is: OU passes ``tokenizer=`` to ``Trainer`` and its
``compute_loss`` lacks ``num_items_in_batch``, which transformers 5.x requires. So the OU stages
run on wheels carried from here, the versions this project's venv is tested with: transformers
4.45.1 and what it needs in that version, Hydra, datasets, and what OU imports unconditionally
(``lm_eval`` through ``evals``, ``deepspeed`` through ``trainer.unlearn.rmu``, ``rouge_score`` /
``nltk`` through the metrics). Everything else (numpy, pandas, pyarrow, scipy, scikit-learn,
safetensors, ...) is taken from the machine (``gpu_machine_packages.txt``, as the device tool's
KINDS.md lists them). The folder ``.gpu-carry/`` (git-ignored, ``carry=[".gpu-carry"]``) holds:

    wheels/     one wheel per pin below, for cp312 / manylinux x86_64 (pure-python sdists built here)
    ou/         OU's src/ and configs/, and a slice of MUSE-Books (text chunks of 512 tokens)
    tokenizer/  SmolLM2's tokenizer (the 1B model of the timing stage is built from a config)
    manifest.json

:func:`simulate` checks here that the wheels install together for cp312 and that, with only them
and the machine's packages importable, OU's train chain and our plugin import and the OU runs of
gpu_check compose: the part of the GPU check that needs no GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / ".gpu-carry"
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on what travels: working tree + carried paths
MACHINE_PACKAGES = Path(__file__).with_name("gpu_machine_packages.txt")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# the versions of this project's venv (OU's pins where OU pins them)
PINS = (
    "transformers==4.45.1", "tokenizers==0.20.3", "huggingface-hub==0.29.1", "accelerate==0.34.2", "peft==0.21.2",
    "fsspec==2024.6.1", "datasets==3.0.1", "dill==0.3.8", "multiprocess==0.70.16",
    "hydra-core==1.3.0", "omegaconf==2.4.0", "antlr4-python3-runtime==4.9.3", "hydra-colorlog==1.2.0",
    "colorlog==6.12.0", "lm_eval==0.4.8", "evaluate==0.4.6", "more-itertools==11.2.1", "sqlitedict==2.1.0",
    "rouge_score==0.1.2", "nltk==3.10.4", "numexpr==2.14.2", "zstandard==0.25.0", "pytz==2026.6",
    "deepspeed==0.15.4", "hjson==3.1.0", "pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
)
SDIST_ONLY = {"antlr4-python3-runtime", "sqlitedict", "rouge_score", "deepspeed"}  # pure python, built here
MUSE_FORGET_CHARS, MUSE_RETAIN_ROWS, MUSE_RETAIN_CHARS = 150_000, 3, 40_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pinned() -> dict[str, str]:
    return {canonical(pin.split("==")[0]): pin.split("==")[1] for pin in PINS}


def wheel_name(path: Path) -> tuple[str, str]:
    """(canonical distribution name, version) of a wheel file."""
    name, version = path.name.split("-")[:2]
    return canonical(name), version


def _pip(python: str, *args: str, env: dict | None = None) -> None:
    done = subprocess.run([python, "-m", "pip", *args, "--disable-pip-version-check", "-q"], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, check=False)
    if done.returncode:
        raise RuntimeError(f"pip {' '.join(args[:3])} ... failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def fetch_wheels(target: Path, python: str = sys.executable) -> list[Path]:
    """One wheel per pin in ``target`` (stale ones removed): binaries for cp312 / manylinux x86_64
    from the registry, the sdist-only pure-python ones built here."""
    target.mkdir(parents=True, exist_ok=True)
    wanted = pinned()
    for path in target.glob("*.whl"):
        if wanted.get(wheel_name(path)[0]) != wheel_name(path)[1]:
            path.unlink()
    have = {wheel_name(path)[0] for path in target.glob("*.whl")}
    platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for pin in PINS:
        name = canonical(pin.split("==")[0])
        if name in have:
            continue
        if pin.split("==")[0] in SDIST_ONLY:  # deepspeed's build imports torch: use this venv's
            _pip(python, "wheel", "--no-deps", "--no-build-isolation", "-w", str(target), pin, env={"DS_BUILD_OPS": "0"})
        else:
            _pip(python, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                 "--implementation", "cp", *platform, "-d", str(target), pin)
    wheels = sorted(target.glob("*.whl"))
    found = {wheel_name(path)[0] for path in wheels}
    if found != set(wanted) or len(wheels) != len(wanted):
        raise RuntimeError(f"wheels in {target} do not match the pins: missing {sorted(set(wanted) - found)}")
    return wheels


def copy_ou(ou_dir: Path, target: Path) -> None:
    """OU's src/ and configs/ (no data, no caches)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in ("src", "configs"):
        shutil.rmtree(target / part, ignore_errors=True)
        shutil.copytree(ou_dir / part, target / part, ignore=ignore)


def slice_muse_books(mirror: Path, target: Path) -> None:
    """A MUSE-Books slice loadable by datasets as ``muse-bench/MUSE-Books`` (config raw: forget, retain1)."""
    source, out = mirror / "muse-bench" / "MUSE-Books", target / "muse-bench" / "MUSE-Books"
    out.mkdir(parents=True, exist_ok=True)
    forget = json.loads((source / "raw_forget.jsonl").read_text().splitlines()[0])
    (out / "raw_forget.jsonl").write_text(json.dumps({"text": forget["text"][:MUSE_FORGET_CHARS]}) + "\n")
    rows = [json.loads(line) for line in (source / "raw_retain1.jsonl").read_text().splitlines()[:MUSE_RETAIN_ROWS]]
    (out / "raw_retain1.jsonl").write_text("".join(json.dumps({"text": r["text"][:MUSE_RETAIN_CHARS]}) + "\n"
                                                   for r in rows))
    (out / "README.md").write_text(
        "---\nconfigs:\n- config_name: raw\n  data_files:\n  - split: forget\n    path: raw_forget.jsonl\n"
        "  - split: retain1\n    path: raw_retain1.jsonl\n---\n\n# MUSE-Books slice for bench/gpu_check.py\n")


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def repo_bytes() -> int:
    """What the device tool sends besides the carried paths: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    return sum((REPO / p).stat().st_size for p in listed if p and (REPO / p).is_file() and not (REPO / p).is_symlink())


def prepare(ou_dir: Path, mirror: Path, tokenizer_dir: Path, carry: Path = CARRY) -> dict:
    from asu_plugin.openunlearning.environment import ou_commit  # noqa: PLC0415  (the project's venv)

    wheels = fetch_wheels(carry / "wheels")
    copy_ou(ou_dir, carry / "ou")
    slice_muse_books(mirror, carry / "ou")
    (carry / "tokenizer").mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, carry / "tokenizer" / name)
    manifest = {
        "pins": list(PINS),
        "wheels": {p.name: p.stat().st_size for p in wheels},
        "open_unlearning_commit": ou_commit(ou_dir),
        "data": "muse-bench/MUSE-Books raw: forget (first %d characters), retain1 (%d rows, %d characters each)"
                % (MUSE_FORGET_CHARS, MUSE_RETAIN_ROWS, MUSE_RETAIN_CHARS),
        "tokenizer": str(tokenizer_dir),
    }
    (carry / "manifest.json").write_text(json.dumps(manifest, indent=1))
    manifest["carry_bytes"], manifest["repo_bytes"] = folder_bytes(carry), repo_bytes()
    return manifest


# ---- the check here: the carried wheels + the machine's packages, nothing else ---------------------


def machine_packages() -> set[str]:
    lines = MACHINE_PACKAGES.read_text().splitlines()
    return {canonical(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def _top_levels(files) -> set[str]:
    tops = set()
    for file in files or ():
        first = Path(str(file)).parts[0] if Path(str(file)).parts else ""
        if first and first not in ("..", "__pycache__") and not first.endswith(".pth"):
            tops.add(first)
    return tops


def _wheel_top_levels(path: Path) -> set[str]:
    with zipfile.ZipFile(path) as archive:
        return _top_levels(archive.namelist())


def _interpreter_specific(path: Path) -> bool:
    """A wheel only a python 3.12 can import (cp312 extension, or py312 code such as multiprocess's)."""
    tags = path.name[:-4].split("-")[-3:]
    return tags[0] not in ("py3", "py2.py3") and not tags[1].startswith("abi3")


def simulated_site(carry: Path = CARRY, cache: Path | None = None) -> tuple[Path, dict]:
    """A folder importing exactly what the machine would: the carried wheels (installed for cp312 by
    pip, which checks that they install together) and the machine's own packages, taken from this
    venv. A wheel only python 3.12 can import is stood in for by this venv's copy of the same version."""
    import importlib.metadata as metadata

    wheels = sorted((carry / "wheels").glob("*.whl"))
    key = hashlib.sha256("".join(f"{w.name}{w.stat().st_size}" for w in wheels).encode()).hexdigest()[:16]
    cache = cache or Path("~/.cache/asu-plugin/gpu-dry-run").expanduser()
    site, installed = cache / f"site-{key}", cache / f"cp312-{key}"
    report = {"wheels": len(wheels), "stand_ins": [], "machine": 0}
    if not (installed / ".done").is_file():
        shutil.rmtree(installed, ignore_errors=True)
        platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
        _pip(sys.executable, "install", "--no-index", "--no-deps", "--no-compile", "--only-binary=:all:",
             "--python-version", "3.12", "--implementation", "cp", *platform, "--target", str(installed),
             *map(str, wheels))
        (installed / ".done").write_text("ok")
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    carried = {wheel_name(w)[0] for w in wheels}
    local = {canonical(d.metadata["Name"]): d for d in metadata.distributions()}
    links: dict[str, Path] = {}
    for entry in installed.iterdir():
        links[entry.name] = entry
    for wheel in wheels:
        if _interpreter_specific(wheel):
            name, version = wheel_name(wheel)
            own = local.get(name)
            if own is None or own.version != version:
                raise RuntimeError(f"{wheel.name} needs python 3.12 and this venv has no {name}=={version} to stand in")
            report["stand_ins"].append(f"{name}=={version}")
            for top in _wheel_top_levels(wheel):  # its code from this venv, its metadata from the wheel
                if not top.endswith((".dist-info", ".data")):
                    links[top] = Path(own.locate_file(top))
    for name in machine_packages() - carried:
        own = local.get(name)
        if own is None:
            continue
        report["machine"] += 1
        for top in _top_levels(own.files):
            path = Path(own.locate_file(top))
            if path.exists() and top not in links:
                links[top] = path
    for name, path in links.items():
        if name != ".done":
            (site / name).symlink_to(path)
    return site, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["prepare"])
    parser.add_argument("--ou-dir", type=Path, default=Path(os.environ.get("OU_DIR") or
                                                            "~/.cache/asu-plugin/open-unlearning").expanduser())
    parser.add_argument("--shared-dir", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--tokenizer", type=Path, default=Path("~/.cache/asu-plugin/models/SmolLM2-135M-Instruct").expanduser())
    args = parser.parse_args(argv)
    mirror = Path(os.environ.get("ASU_DATA_MIRROR") or args.shared_dir / "data" / "hf")
    for path, fix in ((args.ou_dir / "src" / "train.py", "set OU_DIR (make install clones it)"),
                      (mirror / "muse-bench" / "MUSE-Books", "set SHARED_DIR or ASU_DATA_MIRROR"),
                      (args.tokenizer / "tokenizer.json", "run `make model`")):
        if not path.exists():
            raise SystemExit(f"gpu-wheels: {path} not found: {fix}")
    manifest = prepare(args.ou_dir, mirror, args.tokenizer)
    total = manifest["carry_bytes"] + manifest["repo_bytes"]
    print(f"{CARRY}: {len(manifest['wheels'])} wheels, {manifest['carry_bytes'] / 2**20:.1f} MiB "
          f"(+ {manifest['repo_bytes'] / 2**20:.1f} MiB of repository) of the {CARRY_LIMIT / 2**20:.0f} MiB that travel")
    if total > CARRY_LIMIT:
        raise SystemExit(f"gpu-wheels: {total / 2**20:.1f} MiB would travel, over the device tool's 64 MiB")


if __name__ == "__main__":
    main()

"""Offline data for OpenUnlearning: link a local mirror of its hub datasets into the OU checkout.

OU loads its data with ``datasets.load_dataset("locuslab/TOFU", name=..., split=...)`` and
the IDK answers from ``./data/idk.jsonl``, both relative to the working directory (the OU
checkout). ``datasets`` prefers a local directory with the hub name's path, so symlinks

    <OU_DIR>/locuslab    -> <mirror>/locuslab
    <OU_DIR>/muse-bench  -> <mirror>/muse-bench
    <OU_DIR>/data/idk.jsonl -> <mirror>/locuslab/TOFU/idk.jsonl

make every TOFU / MUSE config of OU resolve offline with no config edit. The mirror is
any directory laid out like the hub (``<org>/<dataset>/`` with a README.md ``configs:``
block), e.g. the project's ``../shared/data/hf``.

    python -m asu_plugin.openunlearning.data_links link [--ou-dir DIR] [--mirror DIR | --shared-dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .environment import ou_dir as default_ou_dir

logger = logging.getLogger(__name__)

HUB_ORGS = ("locuslab", "muse-bench")
IDK = ("data/idk.jsonl", "locuslab/TOFU/idk.jsonl")  # (place in OU, file in the mirror)


#: ``../shared/data/hf`` beside the project checkout (this file is <checkout>/src/asu_plugin/openunlearning/).
CHECKOUT_MIRROR = Path(__file__).resolve().parents[4] / "shared" / "data" / "hf"


def default_mirror() -> Path | None:
    """``$ASU_DATA_MIRROR``, else ``../shared/data/hf`` beside the project checkout, if present."""
    env = os.environ.get("ASU_DATA_MIRROR")
    if env:
        return Path(env).expanduser()
    return CHECKOUT_MIRROR if CHECKOUT_MIRROR.is_dir() else None


def _link(link: Path, target: Path) -> str:
    """Create ``link -> target``; keep what is already there (a user's own data wins)."""
    if link.is_symlink():
        if link.resolve() == target.resolve():
            return "kept"
        if not link.exists():  # dangling: a mirror that moved
            link.unlink()
        else:
            logger.warning("%s already links to %s; not replacing it with %s", link, os.readlink(link), target)
            return "other"
    elif link.exists():
        logger.info("%s exists (not a link); using it instead of %s", link, target)
        return "other"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target.resolve(), target_is_directory=target.is_dir())
    return "linked"


def link_offline_data(ou_dir: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None) -> dict:
    """Link the mirror's hub datasets (and TOFU's idk.jsonl) into the OU checkout.

    Idempotent. Returns ``{link path: "linked" | "kept" | "other" | "absent"}``; "absent"
    means the mirror lacks that dataset (OU would then try the hub). Raises
    ``FileNotFoundError`` when the OU checkout or the mirror does not exist.
    """
    ou = Path(ou_dir).expanduser() if ou_dir is not None else default_ou_dir()
    mirror = Path(mirror).expanduser() if mirror is not None else default_mirror()
    if not (ou / "src" / "train.py").is_file():
        raise FileNotFoundError(
            f"no OpenUnlearning checkout at {ou} (src/train.py missing); set OU_DIR or pass ou_dir"
        )
    if mirror is None or not mirror.is_dir():
        raise FileNotFoundError(
            f"no dataset mirror at {mirror}: pass one laid out like the hub (locuslab/TOFU, "
            "muse-bench/MUSE-News, ...) or set ASU_DATA_MIRROR"
        )
    result = {}
    for org in HUB_ORGS:
        link = ou / org
        result[str(link)] = _link(link, mirror / org) if (mirror / org).is_dir() else "absent"
    place, source = IDK
    link = ou / place
    result[str(link)] = _link(link, mirror / source) if (mirror / source).is_file() else "absent"
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", default="link", choices=["link"], help="link (the default)")
    parser.add_argument("--ou-dir", default=None, help="OpenUnlearning checkout (default: $OU_DIR)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mirror", default=None, help="dataset mirror (default: $ASU_DATA_MIRROR or ../shared/data/hf)")
    where.add_argument("--shared-dir", default=None, help="the project's shared/ dir (mirror = SHARED_DIR/data/hf)")
    options = parser.parse_args(argv)
    mirror = options.mirror or (str(Path(options.shared_dir) / "data" / "hf") if options.shared_dir else None)
    try:
        result = link_offline_data(options.ou_dir, mirror)
    except FileNotFoundError as error:
        logger.error("error: %s", error)
        return 2
    sys.stdout.write("".join(f"{state:7s} {link}\n" for link, state in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

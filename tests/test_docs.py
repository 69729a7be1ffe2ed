"""The repository explains itself: every file or folder that README.md or docs/*.md names exists in
the repository, the README stays a guide (at most 250 lines), and nothing in the repository points to
documents outside it."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_LINES = 250

TOP_FOLDERS = ("promptkd_ray", "tests", "benchmarks", "docs", "jobs", "tune_spaces", "deploy")
TOP_FILES = ("cluster.yaml", "Makefile", "pyproject.toml", "README.md")
SUBPACKAGES = ("core", "data", "config", "orchestration", "cli", "interop", "toyworld", "recipes")
PLACEHOLDERS = {"X", "S", "NAME", "PATH", "PACK", "DIR", "CACHE", "SPACE", "JOB"}  # `jobs/X.yaml`
CODE_HOMES = ("promptkd_ray", "tests", "benchmarks")

NOT_AFTER = r"(?<![\w./~:$-])"  # not inside a longer path, a URI or a home folder
REPO_PATH = re.compile(NOT_AFTER + r"((?:%s)/(?:[\w./*-]*[\w*/])?)" % "|".join(TOP_FOLDERS))
TOP_FILE = re.compile(NOT_AFTER + r"(%s)(?![\w/-])" % "|".join(re.escape(f) for f in TOP_FILES))
PACKAGE_PATH = re.compile(NOT_AFTER + r"((?:%s)/[\w./-]*\.py)\b" % "|".join(SUBPACKAGES))
BARE_MODULE = re.compile(NOT_AFTER + r"([A-Za-z_]\w*\.py)\b")
DOTTED_MODULE = re.compile(NOT_AFTER + r"(promptkd_ray(?:\.\w+)+)")
LINK = re.compile(r"\]\(([^)\s]+)\)")

# The three documents that lived outside the repository, spelled so that this file does not name them.
OUTSIDE = ("../" + "shared", "DESIGN" + ".md", "PROTOCOL" + ".md", "STYLE" + ".md")
SCANNED = ("promptkd_ray", "tests", "benchmarks", "docs", "jobs", "tune_spaces", "README.md")


def _exists(relative: str, root: Path) -> bool:
    if any(ch in relative for ch in "*?["):
        return any(root.glob(relative.rstrip("/")))
    return (root / relative).exists()


def _module_exists(dotted: str, root: Path) -> bool:
    """`promptkd_ray.core.losses` (a module or package), or a name defined in a module
    (`promptkd_ray.core.losses.kd_loss`)."""
    *parent, name = dotted.split(".")
    module = root.joinpath(*parent, name)
    if module.with_suffix(".py").is_file() or (module / "__init__.py").is_file():
        return True
    defining = root.joinpath(*parent).with_suffix(".py")
    return (
        defining.is_file()
        and re.search(rf"^\s*(def|class)? ?{name}\b", defining.read_text(), re.M) is not None
    )


def missing_paths(text: str, here: Path, root: Path = ROOT) -> list[str]:
    """Every repository path `text` names that does not exist: paths from the repository's root
    (`jobs/toy_b2n.yaml`, `promptkd_ray/core/losses.py`, `cluster.yaml`), package paths
    (`data/decode.py` under promptkd_ray/), module file names (`losses.py`, somewhere in the code),
    dotted modules (`promptkd_ray.storage`) and relative Markdown links (from `here`, the folder of
    the document). URIs, home folders, globs that match and placeholders (`jobs/X.yaml`) pass."""
    missing = []
    for found in REPO_PATH.findall(text) + TOP_FILE.findall(text):
        if not set(Path(found).stem.split("/")) & PLACEHOLDERS and not _exists(found, root):
            missing.append(found)
    for found in PACKAGE_PATH.findall(text):
        if not _exists(f"promptkd_ray/{found}", root):
            missing.append(found)
    for found in BARE_MODULE.findall(text):
        if not any(any((root / home).rglob(found)) for home in CODE_HOMES):
            missing.append(found)
    missing += [found for found in DOTTED_MODULE.findall(text) if not _module_exists(found, root)]
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and not re.match(r"[a-z]+:", target) and not (here / target).exists():
            missing.append(target)
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_document_names_exists_in_the_repository(doc):
    assert missing_paths(doc.read_text(encoding="utf-8"), doc.parent) == []


def test_the_path_check_catches_a_renamed_file_folder_module_or_link(tmp_path):
    (tmp_path / "promptkd_ray" / "data").mkdir(parents=True)
    (tmp_path / "promptkd_ray" / "__init__.py").write_text("")
    (tmp_path / "promptkd_ray" / "data" / "__init__.py").write_text("")
    (tmp_path / "promptkd_ray" / "data" / "decode.py").write_text("def view():\n    pass\n")
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "toy_b2n.yaml").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "protocol.md").write_text("")
    (tmp_path / "cluster.yaml").write_text("")
    text = """
    Runs `jobs/toy_b2n.yaml`; the old name `jobs/toy_base2novel.yaml` is gone.
    The decoder `promptkd_ray/data/decode.py` (or `data/decode.py`, or `decode.py`), not
    `promptkd_ray/data/decoder.py`, `data/decoder.py` or `decoder.py`; the package `promptkd_ray/data/`
    but not `promptkd_ray/datasets/`. `promptkd_ray.data.decode` and its `promptkd_ray.data.decode.view`,
    not `promptkd_ray.data.decoding` nor `promptkd_ray.data.decode.views`. See [the protocol](protocol.md#loss), not [it](protocols.md);
    [the cluster](../cluster.yaml) but not `cluster.yml` nor [a launcher](../cluster_launcher.yaml).
    `jobs/*.yaml` matches, `jobs/*.yml` does not; `jobs/X.yaml` is a placeholder; s3://bucket/jobs/a.yaml,
    ~/.cache/promptkd_ray/toyworld and [Ray](https://docs.ray.io) are not repository paths.
    """
    assert sorted(missing_paths(text, tmp_path / "docs", root=tmp_path)) == sorted(
        [
            "jobs/toy_base2novel.yaml",
            "promptkd_ray/data/decoder.py",
            "data/decoder.py",
            "decoder.py",
            "promptkd_ray/datasets/",
            "promptkd_ray.data.decoding",
            "promptkd_ray.data.decode.views",
            "protocols.md",
            "../cluster_launcher.yaml",
            "jobs/*.yml",
        ]
    )


def test_the_readme_is_a_guide_of_at_most_250_lines():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_LINES, f"README.md has {len(lines)} lines; details belong in docs/"
    assert lines[2:4] == [
        "    make demo    # fresh machine: creates .venv, installs, runs the offline demo on a local Ray",
        "    make test    # fresh machine: creates .venv, installs, runs the test suite",
    ]


def test_nothing_in_the_repository_points_to_documents_outside_it():
    files = [ROOT / name for name in SCANNED if (ROOT / name).is_file()]
    files += [p for name in SCANNED if (ROOT / name).is_dir() for p in (ROOT / name).rglob("*")]
    found = []
    for path in files:
        if not path.is_file() or "__pycache__" in path.parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {name}" for name in OUTSIDE if name in line]
    assert found == [], "name docs/architecture.md, docs/protocol.md or docs/style.md instead:\n" + "\n".join(
        found
    )

"""`make release` reproduces the committed release/ and solutions/ (they are never stale), and a fresh
clone of the repository works by following only the README."""
import os
import shutil
import subprocess

import pytest

import course_config
from tests.conftest import ROOT, make, user_env


def notebooks(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_release_and_solutions_are_current(course):
    shutil.rmtree(course / "release")
    shutil.rmtree(course / "solutions")
    result = make(course, "release")
    assert "no leaks" in result.stdout
    for folder in ("release", "solutions"):
        fresh, committed = notebooks(course / folder), notebooks(ROOT / folder)
        assert sorted(fresh) == sorted(committed), f"{folder}/ has other files than `make release` makes"
        stale = [name for name in fresh if fresh[name] != committed[name]]
        assert not stale, f"{folder}/{stale} are stale against source/: run `make release` and commit"
    # Run by the course folder's owner, it prepares this host's grading, which the first batch then reads.
    assert "this host's grading is prepared" in result.stdout, result.stdout[-2000:]
    prepared = sorted(p.name for p in (course / ".grading" / "templates").glob("*/*") if p.is_file())
    assert prepared == sorted(["scaling_statistics.json"] + [f"gradebook-{a}.db" for a in course_config.ASSIGNMENTS]), prepared


def test_release_refuses_a_leak(course):
    """Plant a solution line where nbgrader keeps it (a read-only cell): the release is refused."""
    import nbformat

    path = course / "source" / "attention_surgeon" / "01_attention_from_scratch.ipynb"
    nb = nbformat.read(path, as_version=4)
    demo = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "demo")
    demo.source += "\nrow_max = scores.amax(dim=-1, keepdim=True).detach()  # [..., L, 1]"
    nbformat.write(nb, path)
    result = make(course, "release", check=False)
    assert result.returncode != 0 and "RELEASE REFUSED" in result.stderr


def has_commits():
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode == 0


@pytest.mark.skipif(not has_commits(), reason="nothing committed to clone yet")
def test_fresh_clone_follows_the_readme(tmp_path):
    """git clone, then the README's two commands: `make release` (creates .venv) and `make test`."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = user_env()
    release = subprocess.run(["make", "release"], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert release.returncode == 0, release.stdout[-3000:] + release.stderr[-3000:]
    assert (clone / ".venv" / ".installed").exists()
    assert (clone / "release" / "attention_surgeon" / "01_attention_from_scratch.ipynb").exists()
    # The whole suite already runs here; inside the clone, its quick subset proves `make test` works there.
    env["PYTEST_ADDOPTS"] = "-m smoke"
    test = subprocess.run(["make", "test"], cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert " passed" in test.stdout
    assert not subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True,
                              text=True).stdout.strip(), "make release in a fresh clone changed committed files"
    os.sync()

"""Results files name the code they were measured on, uncommitted changes included."""

from __future__ import annotations

import subprocess

from lpm_rt.benchmark import git_state


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_git_state_labels_uncommitted_changes(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "kernel.py").write_text("a = 1\n")
    _git(repo, "add", "kernel.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_state(repo) == dict(git_sha=sha, git_dirty=False)
    (repo / "kernel.py").write_text("a = 2\n")
    (repo / "untracked.txt").write_text("scratch\n")                  # not code the run used
    assert git_state(repo) == dict(git_sha=sha, git_dirty=True, git_changes=["kernel.py"])
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_state(outside) == dict(git_sha=None, git_dirty=None)

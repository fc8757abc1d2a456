"""What a study records so that its results can be reproduced: versions, the commit of the code
that ran, and the device."""

from __future__ import annotations

import subprocess

import bench.environment as environment


def git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_is_marked_dirty_by_edits_to_tracked_files_not_by_new_files(tmp_path, monkeypatch):
    """A study file of one's own, or results, beside the code change nothing of what ran; an edit
    to the code does, and a report that named the commit alone would claim code that did not run."""
    checkout = tmp_path / "checkout"
    (checkout / "bench").mkdir(parents=True)
    (checkout / "bench" / "environment.py").write_text("# the package\n")
    git(checkout, "init", "-q")
    git(checkout, "add", ".")
    git(checkout, "-c", "user.name=t", "-c", "user.email=t@example.org", "-c", "commit.gpgsign=false",
        "commit", "-qm", "first")
    head = git(checkout, "rev-parse", "HEAD")
    monkeypatch.setattr(environment, "__file__", str(checkout / "bench" / "environment.py"))

    (checkout / "my_study.toml").write_text('name = "mine"\n')
    assert environment.git_commit() == head
    (checkout / "bench" / "environment.py").write_text("# the package, edited\n")
    assert environment.git_commit() == head + "+dirty"


def test_code_outside_a_git_checkout_has_no_commit(tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "bench"
    installed.mkdir(parents=True)
    monkeypatch.setattr(environment, "__file__", str(installed / "environment.py"))
    assert environment.git_commit() is None


def test_versions_say_which_packages_are_missing_and_a_report_leaves_the_device_out(monkeypatch):
    """A report trains nothing, and loading torch to name the device took 2 to 4 s of `bench compare`."""
    monkeypatch.setattr(environment, "PACKAGES", ("gradnorm-bench", "no-such-package-anywhere"))
    versions = environment.package_versions()
    assert list(versions) == ["python", "gradnorm-bench", "no-such-package-anywhere"]
    assert versions["no-such-package-anywhere"] == "not installed" != versions["gradnorm-bench"]

    assert "device" not in environment.environment(device=False)
    assert environment.environment()["device"].startswith(("cpu: ", "cuda: "))

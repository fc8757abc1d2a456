"""The workers training on this machine, whatever their study: seen while they train, and not
once they stop, however they stop."""

from __future__ import annotations

import os
import signal

from bench.study.machine import SUFFIX, TrainersHere, default_folder


def test_a_worker_is_seen_with_its_processes_while_it_trains_and_not_after(trainer_elsewhere):
    here = TrainersHere()
    assert here.processes() == {}
    other = trainer_elsewhere(3)
    assert here.processes() == {other.pid: 3}
    with here.training(1):
        assert here.processes() == {other.pid: 3, os.getpid(): 1}
        assert here.others() == {other.pid: 3}
    assert here.processes() == {other.pid: 3} == here.others()  # this one stopped training
    other.communicate("")  # the other ends its block
    assert here.processes() == {}


def test_a_killed_worker_is_not_seen_and_its_file_goes(trainer_elsewhere):
    """A worker killed outright (SIGKILL, out of memory) removes nothing: its lock goes with it,
    and the next look removes its file."""
    other = trainer_elsewhere(2)
    other.send_signal(signal.SIGKILL)
    other.wait()
    folder = default_folder()
    assert [p.name.split("-")[0] for p in folder.glob(f"*{SUFFIX}")] == [str(other.pid)]
    assert TrainersHere().processes() == {}
    assert not list(folder.glob(f"*{SUFFIX}"))


def test_a_file_of_a_live_worker_not_locked_by_it_is_not_counted(tmp_path):
    """A file of this process left unlocked (its lock gone with a closed handle) is no worker."""
    (tmp_path / f"{os.getpid()}-1-x{SUFFIX}").write_text("")
    (tmp_path / f"notes{SUFFIX}").write_text("")  # not one of ours: neither counted nor removed
    assert TrainersHere(tmp_path).processes() == {}
    assert [p.name for p in tmp_path.iterdir()] == [f"notes{SUFFIX}"]


def test_with_no_folder_to_write_a_worker_trains_unseen(tmp_path):
    blocked = tmp_path / "a file"
    blocked.write_text("")
    here = TrainersHere(blocked / "trainers")  # a folder under a file cannot be made
    with here.training(2):
        assert here.processes() == {}


def test_a_worker_of_another_container_with_this_ones_process_id_is_another(tmp_path):
    """Containers sharing BENCH_TRAINERS each number their processes from 1: a worker there with
    this one's process id is still another worker, and this one's own file is never another."""
    import fcntl

    here = TrainersHere(tmp_path)
    with here.training(1), open(tmp_path / f"{os.getpid()}-2-elsewhere{SUFFIX}", "w") as theirs:
        fcntl.flock(theirs, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held as that container's worker holds it
        assert here.others() == {os.getpid(): 2}
        assert here.processes() == {os.getpid(): 3}
    assert here.others() == {}

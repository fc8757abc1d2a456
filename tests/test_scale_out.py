"""Many workers on one study: PostgreSQL and the embedded journal file, a worker SIGKILLed
mid-run, and a Dask cluster. Every run must be present exactly once, with the results of a
one-process run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from collections import Counter

import optuna
import pytest
from optuna.trial import TrialState

from bench.store import ResultStore
from bench.store.results import RUN_KEY, WORKER, is_finished
from bench.study import StudyRunner, StudySpec
from tests.servers import new_database, postgres_server

# float64 so that runs stacked differently by different workers agree to 1e-9.
SHARED = """
name = "shared"
seeds = [0, 1, 2]
dtype = "float64"

[problem]
name = "toy"
tasks = 2
sigmas = [1.0, 10.0]
input_dim = 20
output_dim = 10
hidden = 40
depth = 3
n_train = 200
n_val = 50
n_test = 50

[budget]
steps = 300
batch_size = 20
lr = 0.005
eval_every = 40

[arms.grid]
method = "exhaustive"
resolution = 0.125

[arms.gradnorm]
alpha = [0.5, 1.5]

[arms.gradnorm-static]

[arms.equal]
"""


def spec() -> StudySpec:
    return StudySpec.from_dict(tomllib.loads(SHARED), source="shared.toml")


def start_worker(study_file, storage: str, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bench", "run", "--study", str(study_file), "--storage", storage,
         "--heartbeat", "1", "--grace", "4", "--batch-runs", "3"],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def held_by(store: ResultStore, pid: int) -> int:
    """Runs of the study that the worker with this pid holds right now."""
    count = 0
    for summary in store.storage.get_all_studies():
        if not summary.study_name.startswith("shared/"):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=store.storage)
        count += sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                     if t.system_attrs.get(WORKER, "").endswith(f":{pid}"))
    return count


def run_three_workers_and_kill_one(storage: str, tmp_path) -> None:
    study_file = tmp_path / "shared.toml"
    study_file.write_text(SHARED)
    workers = [start_worker(study_file, storage, tmp_path) for _ in range(3)]
    victim = workers[0]
    store = ResultStore(storage)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill it while it holds runs, mid-training
        if "shared" in store.study_names() and held_by(store, victim.pid) > 0:
            break
        assert victim.poll() is None, victim.communicate()
        time.sleep(0.05)
    else:
        pytest.fail("the first worker never held a run")
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for worker in workers[1:]:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err


def assert_every_run_once_and_equal_to_one_process(storage: str, tmp_path) -> None:
    store = ResultStore(storage)
    expected = {(r.arm, r.key) for r in spec().runs()}
    finished = Counter()
    retried = 0
    for arm in spec().arms:
        study = store.arm_study("shared", arm)
        for t in study.get_trials(deepcopy=False):
            if is_finished(t):
                finished[(arm, t.user_attrs[RUN_KEY])] += 1
            retried += "failed_trial" in t.system_attrs
    assert set(finished) == expected
    assert set(finished.values()) == {1}  # nothing lost, nothing stored twice
    assert retried > 0  # the killed worker's runs were queued again and retrained

    reference = ResultStore(str(tmp_path / "one-process.journal"))
    StudyRunner(spec(), reference, batch_runs=5).run()
    got = {(r["arm"], r["run_key"]): r for r in store.records("shared")}
    want = {(r["arm"], r["run_key"]): r for r in reference.records("shared")}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key]["status"] == want[key]["status"] == "ok"
        assert got[key]["value"] == pytest.approx(want[key]["value"], rel=1e-9)
        assert got[key]["record"]["test_loss"] == pytest.approx(want[key]["record"]["test_loss"], rel=1e-9)


@pytest.mark.slow
def test_three_workers_on_postgresql_one_killed(tmp_path):
    with postgres_server() as server:
        # With a password (the test server trusts loopback, so any works): the report, made to be
        # passed on, must not carry it.
        storage = new_database(server).replace("://bench@", "://bench:s3cret@")
        run_three_workers_and_kill_one(storage, tmp_path)
        assert_every_run_once_and_equal_to_one_process(storage, tmp_path)
        from bench.cli import main

        assert main(["compare", "--study", "shared", "--storage", storage, "--reports", str(tmp_path / "r")]) == 0
        html = (tmp_path / "r" / "shared" / "index.html").read_text()
        assert "s3cret" not in html and f"--storage {storage.replace(':s3cret', '')}" in html


@pytest.mark.slow
def test_three_workers_on_the_embedded_journal_one_killed(tmp_path):
    storage = str(tmp_path / "results" / "bench.journal")
    run_three_workers_and_kill_one(storage, tmp_path)
    assert_every_run_once_and_equal_to_one_process(storage, tmp_path)


@pytest.mark.slow
def test_dask_cluster_runs_the_batches(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        store = ResultStore(str(tmp_path / "dask.journal"))
        runner = StudyRunner(spec(), store, jobs=2, batch_runs=4, backend="dask",
                             scheduler=cluster.scheduler_address)
        progress = runner.run()
    assert progress.left == 0 and progress.failed == 0
    reference = ResultStore(str(tmp_path / "local.journal"))
    StudyRunner(spec(), reference, batch_runs=4).run()
    got = {(r["arm"], r["run_key"]): r["value"] for r in store.records("shared")}
    want = {(r["arm"], r["run_key"]): r["value"] for r in reference.records("shared")}
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-9)


def test_dask_backend_needs_a_scheduler(tmp_path):
    from bench.errors import BenchError

    with pytest.raises(BenchError, match="--scheduler"):
        StudyRunner(spec(), ResultStore(str(tmp_path / "x.journal")), backend="dask")


@pytest.mark.slow
def test_status_reports_progress_per_arm(tmp_path):
    storage = str(tmp_path / "status.journal")
    StudyRunner(spec(), ResultStore(storage), batch_runs=8).run()
    out = subprocess.run([sys.executable, "-m", "bench", "status", "--storage", storage],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "shared in" in out.stdout and "gradnorm-static" in out.stdout
    total = len(spec().runs())
    rows = {line.split()[0]: line.split()[1:] for line in out.stdout.splitlines() if line.strip()}
    # runs, done, failed, running, waiting, left
    assert rows["all"] == [str(total), str(total), "0", "0", "0", "0"]


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_stops_a_worker_cleanly_and_a_rerun_finishes(tmp_path, stop):
    study_file = tmp_path / "shared.toml"
    # long enough that the interruption lands mid-study, whatever the machine's load
    study_file.write_text(SHARED.replace("steps = 300", "steps = 1500"))
    storage = str(tmp_path / "results" / "bench.journal")
    worker = start_worker(study_file, storage, tmp_path)
    store = ResultStore(storage)
    deadline = time.monotonic() + 120
    while not ("shared" in store.study_names() and held_by(store, worker.pid) > 0):
        assert time.monotonic() < deadline and worker.poll() is None
        time.sleep(0.05)
    assert worker.poll() is None, "the worker finished before it could be interrupted"
    worker.send_signal(stop)
    out, err = worker.communicate(timeout=120)
    # Never death by SIGINT (-2), which CPython chose at exit when the interrupt had landed in code
    # made from a string: see test_a_stop_signal_landing_in_code_made_from_a_string_still_exits_with_its_code.
    if stop == signal.SIGINT:
        assert worker.returncode == 130, err
        assert "interrupted" in err
    else:  # SIGTERM used to end it at once, its runs left RUNNING
        assert worker.returncode == 143, err
        assert "terminated" in err
    assert "queued again" in err and "Traceback" not in err
    assert held_by(store, worker.pid) == 0  # its runs are not left RUNNING
    again = start_worker(study_file, storage, tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    finished = Counter()
    for arm in spec().arms:
        for t in store.arm_study("shared", arm).get_trials(deepcopy=False):
            if is_finished(t):
                finished[(arm, t.user_attrs[RUN_KEY])] += 1
    assert len(finished) == len(spec().runs()) and set(finished.values()) == {1}


def _page_faults_per_step_after_worker_task(own_process: bool) -> float:
    """In a fresh process: run the study manager's worker task once, then count the page faults
    of a 34-run stack of the default study's training steps."""
    import resource
    from pathlib import Path

    from bench.perf.benchmark import study_configs
    from bench.study.manager import _train_batch
    from bench.training import BatchTrainer

    spec = StudySpec.load(str(Path(__file__).resolve().parents[1] / "studies" / "gridsearch.toml"))
    configs = study_configs(spec, 20, "cpu")[:34]
    _train_batch(0, [configs[0].to_dict()], 1, own_process)
    trainer = BatchTrainer(configs)
    for step in range(10):  # the heap grows to its working size
        trainer.step(step)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for step in range(10, 20):
        trainer.step(step)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tunes glibc's malloc")
def test_our_own_worker_processes_keep_freed_memory_as_the_cli_does():
    """`bench run --jobs N` trains in loky workers, not in the CLI's process: untuned, glibc hands
    the step's large buffers back to the OS and this stack's step pays about 3,000 page faults
    (own_process=False, as for a Dask worker, which is somebody else's process); tuned, under 100."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
        faults = fresh.submit(_page_faults_per_step_after_worker_task, True).result()
    assert faults < 500


def _open_when_told(url: str, go, results) -> None:
    go.wait()
    from bench.store.storage import open_storage

    try:
        open_storage(url)
        results.put("ok")
    except Exception as err:  # the message, for the assertion below
        results.put(str(err))


@pytest.mark.slow
def test_workers_started_together_on_a_new_database_all_open_it():
    """Each worker creates Optuna's tables if they are missing; four at once used to lose that
    race (a duplicate table or key) and stop, all but one."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    with postgres_server() as server:
        for _ in range(3):
            url = new_database(server)
            go, results = context.Event(), context.Queue()
            workers = [context.Process(target=_open_when_told, args=(url, go, results)) for _ in range(4)]
            for worker in workers:
                worker.start()
            time.sleep(0.5)  # all four waiting at the start line
            go.set()
            outcomes = [results.get(timeout=120) for _ in workers]
            for worker in workers:
                worker.join()
            assert outcomes == ["ok"] * 4


@pytest.mark.slow
def test_a_cluster_of_one_worker_thread_trains_every_batch(tmp_path, monkeypatch):
    """joblib runs a call in the calling process when its backend offers one job: with a
    one-thread cluster (one worker on one GPU) every batch trained on the coordinator."""
    distributed = pytest.importorskip("dask.distributed")
    import bench.study.manager as manager

    def not_here(*args, **kwargs):  # the cluster's processes import the module unpatched
        raise AssertionError("a batch trained in the coordinator, not on the cluster")

    monkeypatch.setattr(manager, "train_runs", not_here)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        store = ResultStore(str(tmp_path / "dask.journal"))
        progress = StudyRunner(spec(), store, batch_runs=8, backend="dask",
                               scheduler=cluster.scheduler_address).run()
    assert progress.left == 0 and progress.failed == 0


@pytest.mark.slow
@pytest.mark.timeout(300)  # joblib's own Dask backend waited for the dead worker's batch for ever
def test_a_dask_worker_that_dies_stops_the_coordinator_with_one_line(tmp_path, monkeypatch, capsys):
    distributed = pytest.importorskip("dask.distributed")
    import dask

    from bench.cli import main

    monkeypatch.chdir(tmp_path)  # the cluster's processes start here, and import the module
    (tmp_path / "oom_dask.py").write_text(
        "import os, signal\n"
        "from bench.problems import build_problem\n"
        "def make(**params):\n"
        f"    if os.getpid() != {os.getpid()}:  # a cluster's worker: 'out of memory'\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return build_problem('toy', params)\n")
    (tmp_path / "shared.toml").write_text(SHARED.replace('name = "toy"', 'name = "oom_dask:make"'))
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                     dashboard_address=None) as cluster:
        code = main(["run", "--study", "shared.toml", "--backend", "dask", "--scheduler",
                     cluster.scheduler_address])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err, err
    assert "error: a Dask worker died while training a batch" in err
    assert "in hand were queued again and every run stored is kept: run the same command to go on" in err

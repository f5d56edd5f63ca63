"""Tune's storage folder: a writer killed mid-copy leaves the old file whole (no Ray needed)."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]  # the checkout the commands run from


# A child copies a 2 MB file over an old one with pyarrow.fs.copy_files (what Tune's sync does), through a source
# that hands over the first half and then blocks, so the parent can SIGKILL it mid-copy every time.
KILLED_COPY = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import pyarrow, pyarrow.fs
    from study.store.storage import tune_storage

    class Blocking:
        def __init__(self, data, marker):
            self.data, self.marker, self.closed, self.position = data, marker, False, 0
        def read(self, size=-1):
            if self.position:  # the first half is written: tell the parent, then hang until killed
                Path(self.marker).touch()
                time.sleep(600)
            self.position = len(self.data) // 2
            return self.data[:self.position]
        def close(self):
            self.closed = True

    class Source(pyarrow.fs.FileSystemHandler):
        def __init__(self): self.local = pyarrow.fs.LocalFileSystem()
        def __eq__(self, other): return self is other
        def __ne__(self, other): return self is not other
        def get_type_name(self): return "blocking"
        def normalize_path(self, path): return path
        def get_file_info(self, paths): return self.local.get_file_info(paths)
        def get_file_info_selector(self, selector): return self.local.get_file_info(selector)
        def open_input_stream(self, path):
            return pyarrow.PythonFile(Blocking(Path(path).read_bytes(), sys.argv[3]), mode="r")
        def open_input_file(self, path): return self.open_input_stream(path)
        create_dir = delete_dir = delete_dir_contents = delete_root_dir_contents = delete_file = None
        move = copy_file = open_output_stream = open_append_stream = None

    source, target, marker, atomic = sys.argv[1:5]
    target_fs = tune_storage(target)[1] if atomic == "1" else pyarrow.fs.LocalFileSystem()
    pyarrow.fs.copy_files(source, target, source_filesystem=pyarrow.fs.PyFileSystem(Source()),
                          destination_filesystem=target_fs, chunk_size=1 << 20)
""")


def _kill_mid_copy(tmp_path, atomic: bool):
    """(the target's bytes after the kill, the old bytes, the names left in its folder)."""
    folder = tmp_path / ("atomic" if atomic else "plain")
    folder.mkdir()
    source, target, marker = tmp_path / "new.bin", folder / "tuner.pkl", folder / "halfway"
    source.write_bytes(os.urandom(2 << 20))
    old = os.urandom(1000)
    target.write_bytes(old)
    child = subprocess.Popen([sys.executable, "-c", KILLED_COPY, str(source), str(target), str(marker),
                              "1" if atomic else "0"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert child.poll() is None and time.time() < deadline, "the copy never reached its middle"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    marker.unlink()
    return target.read_bytes(), old, sorted(path.name for path in folder.iterdir())


def test_a_copy_killed_halfway_leaves_the_old_file_whole(tmp_path):
    from study.store.storage import PARTIAL_SUFFIX, remove_partial_files

    torn, old, _ = _kill_mid_copy(tmp_path, atomic=False)
    assert torn != old and len(torn) == 1 << 20  # pyarrow's own local file system: truncated, half written

    kept, old, names = _kill_mid_copy(tmp_path, atomic=True)
    assert kept == old
    assert len(names) == 2 and names[0].startswith(".tuner.pkl.") and names[0].endswith(PARTIAL_SUFFIX), names
    assert remove_partial_files(str(tmp_path / "atomic")) == 1
    assert [path.name for path in (tmp_path / "atomic").iterdir()] == ["tuner.pkl"]


def test_the_atomic_file_system_writes_copies_and_travels_to_workers(tmp_path):
    """Whole files replace old ones, a dropped stream publishes nothing, and it pickles (workers get a copy)."""
    import gc
    import pickle

    import pyarrow.fs

    from study.store.storage import tune_storage

    path, store = tune_storage("s3://bucket/studies?endpoint_override=127.0.0.1:9&scheme=http")
    assert path == "bucket/studies" and store.type_name == "py::patient-s3"  # a URI: pyarrow's store, patiently
    assert pickle.loads(pickle.dumps(store)).type_name == "py::patient-s3"  # it travels to the trial workers
    files = pickle.loads(pickle.dumps(tune_storage(str(tmp_path))[1]))
    (tmp_path / "source" / "checkpoint").mkdir(parents=True)
    weights = os.urandom(3 << 20)
    (tmp_path / "source" / "checkpoint" / "weights.bin").write_bytes(weights)
    (tmp_path / "state.json").write_text("old")
    pyarrow.fs.copy_files(str(tmp_path / "source"), str(tmp_path / "copy"), destination_filesystem=files)
    assert (tmp_path / "copy" / "checkpoint" / "weights.bin").read_bytes() == weights

    stream = files.open_output_stream(str(tmp_path / "state.json"))
    stream.write(b"half")
    del stream  # a writer that gave up: nothing published, nothing left behind
    gc.collect()
    assert (tmp_path / "state.json").read_text() == "old"
    with files.open_output_stream(str(tmp_path / "state.json")) as stream:
        stream.write(b"new")
    assert (tmp_path / "state.json").read_text() == "new"
    files.copy_file(str(tmp_path / "state.json"), str(tmp_path / "copied.json"))
    assert (tmp_path / "copied.json").read_text() == "new"
    assert not list(tmp_path.rglob("*.partial"))
    with pytest.raises(PermissionError):
        files.delete_dir_contents("/", accept_root_dir=True)


def test_damaged_state_files_names_the_newest_state_files_cut_short(tmp_path):
    """Tune reads the newest file of each kind; a pickle (under .pkl or .json) or a JSON text cut short is named."""
    import json
    import pickle

    from study.store.storage import damaged_state_files

    state = pickle.dumps({"trials": list(range(100))})
    text = json.dumps({"trial_data": [[{"id": n}, {}] for n in range(50)]})
    files = {"tuner.pkl": state, "basic-variant-state-2026-01-01_00-00-00.json": state,
             "experiment_state-2026-01-01_00-00-00.json": text[:-1].encode(),  # older session: Tune skips it
             "experiment_state-2026-01-02_00-00-00.json": text.encode(), ".validate_storage_marker": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert damaged_state_files(str(tmp_path)) == []
    (tmp_path / "tuner.pkl").write_bytes(state[:-1])
    (tmp_path / "basic-variant-state-2026-01-01_00-00-00.json").write_bytes(b"")
    (tmp_path / "experiment_state-2026-01-03_00-00-00.json").write_bytes(text[:len(text) // 2].encode())
    assert damaged_state_files(str(tmp_path)) == ["basic-variant-state-2026-01-01_00-00-00.json",
                                                  "experiment_state-2026-01-03_00-00-00.json", "tuner.pkl"]
    assert damaged_state_files("s3://bucket/study") == []


def test_locations_and_files_on_a_real_object_store(object_store, tmp_path):
    """The one module that tells a URI from a path: names join before the query, Tune's bucket/key paths become
    full URIs, files and folders round-trip through SeaweedFS, a stored checkpoint is made weights-only in place,
    and an endpoint with nothing behind it is one reason in seconds."""
    import json

    from study.store.storage import (
        beside,
        check_writable,
        display,
        exists,
        fetch_folder,
        folder_bytes,
        is_uri,
        join,
        kept_checkpoints,
        list_names,
        read_bytes,
        strip_training_state_at,
        uri_of,
        within,
        write_bytes,
    )

    base = object_store("locations")
    bucket_path = base.split("://")[1].split("?")[0]  # what pyarrow and Tune call the path: bucket/key
    study = join(base, "study")
    assert is_uri(study) and not is_uri(str(tmp_path)) and study.endswith("/study?" + base.split("?")[1])
    assert display(study) == f"s3://{bucket_path}/study"
    checkpoint = uri_of(base, f"{bucket_path}/study/run_trial_a/checkpoint_000001")
    assert checkpoint == join(base, "study", "run_trial_a", "checkpoint_000001")
    assert within(checkpoint, base) and not within(checkpoint, join(base, "other"))
    assert not within(join(base, "study", "..", "..", "elsewhere"), base)
    state = {"format": 2, "epoch": 1, "history": [], "variables": ["optimizer:x"]}
    for name, data in (("state.json", json.dumps(state).encode()), ("training_state.npz", os.urandom(1000)),
                       ("decoder.keras", b"weights")):
        write_bytes(join(checkpoint, name), data)
    write_bytes(join(beside(checkpoint, "checkpoint_000000"), "state.json"), b"{}")  # an older one kept beside it
    assert list_names(checkpoint) == ["decoder.keras", "state.json", "training_state.npz"]
    assert kept_checkpoints(checkpoint) == [beside(checkpoint, "checkpoint_000000"), checkpoint]
    assert folder_bytes(base) == 2 + len(json.dumps(state)) + 1000 + 7
    local = fetch_folder(checkpoint, tmp_path / "cache")
    assert (local / "decoder.keras").read_bytes() == b"weights" and fetch_folder(checkpoint, tmp_path / "cache") == local
    assert strip_training_state_at(checkpoint) == 1000 and strip_training_state_at(checkpoint) == 0
    assert not exists(join(checkpoint, "training_state.npz"))
    assert json.loads(read_bytes(join(checkpoint, "state.json")))["variables"] is None
    with pytest.raises(FileNotFoundError):
        read_bytes(join(base, "nothing.json"))
    assert check_writable(base) is None
    dead = base.replace(object_store.endpoint, "127.0.0.1:9")  # the discard port: no store answers there
    reason = check_writable(dead)
    assert reason and "connect" in reason.lower(), reason


def test_a_study_recorded_through_an_endpoint_that_moved_is_read_through_the_one_given(object_store, tmp_path,
                                                                                        monkeypatch):
    """A loopback store restarted on new ports: the tables record checkpoints (and the storage path) with the old
    endpoint; a reader that opened the study by its URI with the new one, or that sets AWS_ENDPOINT_URL, fetches them
    through that; the old endpoint alone names the store that cannot be read."""
    from study.store.storage import join, write_bytes
    from study.tables.records import FLAGS_KEY, READER_STORAGE_KEY
    from study.tables.table_files import checkpoint_within

    live = object_store("moved")
    recorded = live.replace(object_store.endpoint, "127.0.0.1:9")  # where the store answered when it was recorded
    write_bytes(join(live, "study", "trial", "checkpoint_000003", "decoder.keras"), b"weights")
    old_checkpoint = join(recorded, "study", "trial", "checkpoint_000003")
    spec = {FLAGS_KEY: {"storage_path": recorded}}
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(ValueError, match="cannot be read from its store"):
        checkpoint_within(tmp_path, old_checkpoint, spec)
    fetched = checkpoint_within(tmp_path, old_checkpoint, {**spec, READER_STORAGE_KEY: join(live, "study")})
    assert (fetched / "decoder.keras").read_bytes() == b"weights"
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "other-cache"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{object_store.endpoint}")
    assert (checkpoint_within(tmp_path, old_checkpoint, spec) / "decoder.keras").read_bytes() == b"weights"
    with pytest.raises(ValueError, match="outside the study's storage path"):  # still only the study's own storage
        checkpoint_within(tmp_path, join(live, "elsewhere", "checkpoint_000001"), {**spec, READER_STORAGE_KEY: live})


def _start_object_store_command(folder, *flags):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    command = subprocess.Popen([sys.executable, "-m", "study.object_store", str(folder), *flags], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    lines = [command.stdout.readline() for _ in range(4)]  # endpoint; exports; try:; the run.py line
    return command, lines


@pytest.mark.slow
def test_the_local_object_store_command_makes_credentials_and_stops_its_server_whatever_the_signal(tmp_path):
    """`python -m study.object_store` as the README has it (no AWS_* set): it prints the exports to use, they sign
    requests the store accepts, and `kill` (SIGTERM) stops its weed server; after SIGKILL of the command, which
    cannot be caught, the server ends with it. A fixed --port keeps the URI the same across restarts."""
    import pyarrow.fs

    from study.store.loopback_store import answers, free_ports

    command, lines = _start_object_store_command(tmp_path / "store")
    try:
        assert lines[0].startswith("object store on 127.0.0.1:") and "export AWS_ACCESS_KEY_ID=" in lines[1], lines
        endpoint = lines[0].split()[3].rstrip(";")
        exports = dict(item.split("=", 1) for item in lines[1].split()[1:])
        store = pyarrow.fs.S3FileSystem(access_key=exports["AWS_ACCESS_KEY_ID"],
                                        secret_key=exports["AWS_SECRET_ACCESS_KEY"], endpoint_override=endpoint,
                                        scheme="http")
        with store.open_output_stream("cvae/probe.txt") as handle:
            handle.write(b"signed with the printed credentials")
        command.send_signal(signal.SIGTERM)
        assert command.wait(timeout=60) == 0
    finally:
        if command.poll() is None:
            command.kill()
    assert not answers(endpoint)  # stop() waited for the server to end

    port = free_ports(1)[0]
    command, lines = _start_object_store_command(tmp_path / "store", "--port", str(port))
    try:
        assert lines[0].startswith(f"object store on 127.0.0.1:{port};") and answers(f"127.0.0.1:{port}"), lines
        assert f"endpoint_override=127.0.0.1:{port}" in lines[3]
    finally:
        command.kill()
        command.wait()
    deadline = time.monotonic() + 60
    while answers(f"127.0.0.1:{port}") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not answers(f"127.0.0.1:{port}")  # the server ended with its killed parent


def test_the_local_object_store_command_refuses_a_port_it_cannot_use(tmp_path):
    result = subprocess.run([sys.executable, "-m", "study.object_store", str(tmp_path / "store"), "--port", "80"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2 and result.stderr == "error: --port 80 must be in [1024, 65535]\n", result.stderr


# A trial worker: the store's file system as Tune ships it (pickled, carrying the driver's fence) writes one object.
WORKER_WRITE = textwrap.dedent("""
    import pickle, sys
    filesystem, path = pickle.loads(bytes.fromhex(sys.argv[1]))
    try:
        with filesystem.open_output_stream(path) as stream:
            stream.write(b"from a worker")
    except PermissionError as error:
        print("refused:", error)
        sys.exit(3)
""")


def test_a_lease_keeps_a_second_driver_out_and_fences_the_driver_that_lost_it(object_store, monkeypatch):
    """On the real store (SeaweedFS honours If-None-Match and If-Match): one driver's lease refuses a second one,
    naming it; --take-over bumps the fence; after that the first driver, and a trial worker of it, cannot change
    any object of the study; a released lease, or one left to run out by the store's clock, is taken without asking."""
    import pickle

    from study.store import lease as leases
    from study.store import patient_store
    from study.store.storage import filesystem_of, join, read_bytes, write_bytes

    monkeypatch.setattr(patient_store, "FENCE", None)
    monkeypatch.setattr(leases, "_HELD", None)
    for wrong in ("soon", "2", "nan"):
        monkeypatch.setenv("CVAE_LEASE_SECONDS", wrong)
        with pytest.raises(ValueError, match="must be a number of seconds from 5 to 3600"):
            leases.lease_seconds()
    monkeypatch.delenv("CVAE_LEASE_SECONDS")
    study = object_store("leased")
    assert leases.honours_conditional_writes(study)
    lost = []
    first = leases.Lease(study, seconds=5, on_lost=lost.append).acquire()
    second = leases.Lease(study, seconds=5)
    try:
        assert first.fence == 1 and patient_store.FENCE == leases.Fence(first.path, 1)
        tables = join(study, "tables", "trials.csv")
        write_bytes(tables, b"first driver")  # the holder writes
        filesystem, path = filesystem_of(tables)  # made while the first driver holds the lease: it carries fence 1
        shipped = pickle.dumps((filesystem, path)).hex()
        worker = subprocess.run([sys.executable, "-c", WORKER_WRITE, shipped], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert worker.returncode == 0, worker.stdout + worker.stderr
        with pytest.raises(leases.LeaseHeld, match=f"pid {os.getpid()} on "):
            second.acquire()
        second.acquire(take_over=True)
        assert second.fence == 2 and not lost
        write_bytes(tables, b"second driver")
        with pytest.raises(leases.FencedOut):  # the first driver's next renewal finds the study taken over
            first.renew()
        assert lost and "lost the study" in lost[0] and first.lost
        monkeypatch.setattr(patient_store, "FENCE", leases.Fence(first.path, 1))  # back in the first driver's process
        monkeypatch.setattr(leases, "_HELD", first)
        with pytest.raises(PermissionError, match="lost the study"):
            with filesystem.open_output_stream(path) as stream:  # the first driver's own file system
                stream.write(b"fenced out")
        worker = subprocess.run([sys.executable, "-c", WORKER_WRITE, shipped], cwd=REPO, capture_output=True,
                                text=True, timeout=120)
        assert worker.returncode == 3 and "taken over by another driver (fence 2" in worker.stdout, worker.stderr
        assert read_bytes(tables) == b"second driver"  # nothing the fenced-out writers sent got in
        monkeypatch.setattr(patient_store, "FENCE", leases.Fence(second.path, 2))
        monkeypatch.setattr(leases, "_HELD", second)
        second.release()
        third = leases.Lease(study, seconds=5).acquire()  # a released lease: no wait, no --take-over
        assert third.fence == 3
        third.stop.set()  # its driver dies: no renewal, no release
        third.thread.join()
        with pytest.raises(leases.LeaseHeld, match="runs out"):
            leases.Lease(study, seconds=5).acquire()
        time.sleep(5.5)  # the store's clock, not ours, says when it ran out
        fourth = leases.Lease(study, seconds=5).acquire()
        assert fourth.fence == 4
        fourth.release()
    finally:
        first.stop.set()
        second.release()

"""Client-state store: memory and disk backends round-trip, commits are atomic w.r.t. checkpoints."""

from __future__ import annotations

import numpy as np
import pytest

from harness.engine.store import DiskStore, MemoryStore


def _states(n: int, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    gen = np.random.default_rng(seed)
    return {c: {"model": gen.standard_normal(100).astype(np.float32), "mask": np.packbits(gen.random(100) > 0.5)}
            for c in range(n)}


@pytest.mark.parametrize("kind", ["memory", "disk"])
def test_round_trip_exact(tmp_path, kind):
    store = MemoryStore() if kind == "memory" else DiskStore(tmp_path / "s")
    states = _states(30)
    store.commit(states, round=0)
    assert len(store) == 30
    for cid, state in states.items():
        got = store.get(cid)
        assert set(got) == {"model", "mask"}
        for key in state:
            assert got[key].dtype == state[key].dtype
            np.testing.assert_array_equal(got[key], state[key])
    assert store.get(999) == {}


def test_disk_commit_replaces_keys_and_survives_reopen(tmp_path):
    store = DiskStore(tmp_path / "s")
    store.commit({1: {"a": np.ones(3), "b": np.zeros(2)}}, round=0)
    store.commit({1: {"a": np.full(3, 2.0)}}, round=1)  # key b dropped from the client's state
    reopened = DiskStore(tmp_path / "s")
    got = reopened.get(1)
    assert set(got) == {"a"}
    np.testing.assert_array_equal(got["a"], np.full(3, 2.0))


def test_disk_commit_is_undone_when_the_checkpoint_never_confirmed_it(tmp_path):
    store = DiskStore(tmp_path / "s")
    store.commit({1: {"a": np.ones(3)}}, round=0)

    def crash():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.commit({1: {"a": np.full(3, 9.0)}}, round=1, mark_done=crash)
    store.recover(committed_round=0)  # the checkpoint says round 0 is the last one
    np.testing.assert_array_equal(store.get(1)["a"], np.ones(3))


def test_disk_commit_is_finished_when_the_checkpoint_confirmed_it(tmp_path):
    store = DiskStore(tmp_path / "s")
    store.commit({1: {"a": np.ones(3)}}, round=0)
    confirmed = []

    def confirm_then_crash():
        confirmed.append(True)
        raise KeyboardInterrupt  # crash after the checkpoint, before files moved

    with pytest.raises(KeyboardInterrupt):
        store.commit({1: {"a": np.full(3, 9.0)}}, round=1, mark_done=confirm_then_crash)
    assert confirmed
    DiskStore(tmp_path / "s").recover(committed_round=1)
    np.testing.assert_array_equal(DiskStore(tmp_path / "s").get(1)["a"], np.full(3, 9.0))


def test_memory_snapshot_round_trip(tmp_path):
    store = MemoryStore()
    states = _states(5)
    store.commit(states)
    store.save(tmp_path / "snap.npz")
    other = MemoryStore()
    other.load(tmp_path / "snap.npz")
    for cid in states:
        np.testing.assert_array_equal(other.get(cid)["model"], states[cid]["model"])


def test_disk_store_ram_does_not_grow_with_clients(tmp_path):
    """10,000 clients' full models go to disk, not to the process heap."""
    import resource

    store = DiskStore(tmp_path / "s")
    vec = np.zeros(25_000, dtype=np.float32)  # 100 kB per client, 1 GB in all
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for start in range(0, 10_000, 500):
        store.commit({c: {"model": vec} for c in range(start, start + 500)}, round=start)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert len(store) == 10_000
    assert store.nbytes() >= 10_000 * vec.nbytes
    assert (after - before) * 1024 < 200e6  # peak RSS grew by far less than the 1 GB written


def test_disk_store_reads_exact_paths_from_its_index(tmp_path, monkeypatch):
    """Reads must not glob a folder per client (its cost grew with N); the index built at open
    and kept by commits says which keys each client has, also after a reopen and a redo."""
    store = DiskStore(tmp_path / "s")
    store.commit({c: {"theta": np.full(4, float(c)), "head.w": np.ones(2)} for c in (5, 1005, 7)}, round=0)
    store.commit({1005: {"theta": np.zeros(4)}}, round=1)  # 1005 drops head.w
    confirmed = []
    with pytest.raises(KeyboardInterrupt):  # crash after the checkpoint confirmed round 2
        store.commit({7: {"other": np.ones(1)}}, round=2,
                     mark_done=lambda: (confirmed.append(1), (_ for _ in ()).throw(KeyboardInterrupt)))
    reopened = DiskStore(tmp_path / "s")
    reopened.recover(committed_round=2)

    def no_glob(*args, **kwargs):
        raise AssertionError("DiskStore.get globbed")

    monkeypatch.setattr(type(reopened.root), "glob", no_glob)
    assert set(reopened.get(5)) == {"theta", "head.w"} and set(reopened.get(1005)) == {"theta"}
    assert set(reopened.get(7)) == {"other"}  # the redo replaced 7's keys
    np.testing.assert_array_equal(reopened.get(5)["theta"], np.full(4, 5.0))
    assert reopened.get(123) == {} and len(reopened) == 3
    assert sorted(p.name for p in (tmp_path / "s" / "007").iterdir()) == ["7.other.npy"]

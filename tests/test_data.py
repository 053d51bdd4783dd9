"""Data sources, the validation split, standardisation and the deterministic sharded sampler."""
import numpy as np
import pytest

from worker.data import DataError, Normalizer, Sampler, load_dataset
from worker.spec import DataSpec, SyntheticSpec


def test_sampler_epochs_are_permutations_from_seed_and_epoch():
    s = Sampler(103, 10, seed=5)
    assert s.steps_per_epoch == 11
    batches = [s.global_batch(2, k) for k in range(11)]
    assert [len(b) for b in batches] == [10] * 10 + [3]  # short last batch is kept
    assert sorted(np.concatenate(batches)) == list(range(103))
    again = Sampler(103, 10, seed=5)
    np.testing.assert_array_equal(again.global_batch(2, 4), s.global_batch(2, 4))
    assert not np.array_equal(s.epoch_order(3), s.epoch_order(2))
    assert not np.array_equal(Sampler(103, 10, seed=6).epoch_order(2), s.epoch_order(2))


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_rank_slices_partition_every_global_batch(size):
    s = Sampler(50, 9, seed=0)
    for position in range(s.steps_per_epoch):
        batch = s.global_batch(0, position)
        parts = [s.rank_batch(0, position, r, size) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts), batch)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_locate_maps_steps_to_epoch_and_position():
    s = Sampler(100, 32, seed=0)  # 4 steps per epoch
    assert s.locate(0) == (0, 0) and s.locate(3) == (0, 3) and s.locate(4) == (1, 0) and s.locate(9) == (2, 1)


def test_digits_split_is_stratified_and_disjoint():
    ds = load_dataset(DataSpec(source="digits", val_fraction=0.1), (64, 10), "cross_entropy", seed=0)
    assert len(ds.train) + len(ds.val) == 1797
    assert not set(ds.train.index) & set(ds.val.index)
    counts = np.bincount(ds.val.y[ds.val.index], minlength=10)
    assert counts.min() >= 17 and counts.max() <= 19
    x, y = ds.train.rows(np.arange(5))
    assert x.dtype == np.float32 and x.shape == (5, 64) and 0 <= x.min() and x.max() <= 1


def test_synthetic_is_seeded():
    spec = DataSpec(source="synthetic", synthetic=SyntheticSpec(samples=200, features=8, classes=3, seed=4))
    a = load_dataset(spec, (8, 3), "cross_entropy", seed=0)
    b = load_dataset(spec, (8, 3), "cross_entropy", seed=0)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    assert set(np.unique(a.train.y)) == {0, 1, 2}


def test_a_large_synthetic_sample_is_drawn_once_per_host_and_mapped_after(tmp_path, monkeypatch):
    """Every attempt of a sweep's trials loads the same sample: the second load maps the first one's bits."""
    from worker import data, datacache

    monkeypatch.setenv(datacache.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "SYNTHETIC_CACHE_MIN_VALUES", 1000)
    spec = DataSpec(source="synthetic", synthetic=SyntheticSpec(samples=300, features=16, classes=4, seed=5))
    drawn = data._draw_synthetic(300, 16, 4, 5)
    first = load_dataset(spec, (16, 4), "cross_entropy", seed=0)
    assert isinstance(first.train.x, np.memmap) and len(list(tmp_path.glob(".synthetic-v1*.npy"))) == 2
    draws = []
    monkeypatch.setattr(data, "_draw_synthetic", lambda *a: draws.append(a) or drawn)
    second = load_dataset(spec, (16, 4), "cross_entropy", seed=0)
    assert draws == []   # read back, not drawn again
    for got in (first, second):
        np.testing.assert_array_equal(np.asarray(got.train.x), drawn[0])
        assert got.train.x.dtype == drawn[0].dtype and got.train.y.dtype == drawn[1].dtype
        np.testing.assert_array_equal(np.asarray(got.train.y), drawn[1])
    a, b = Normalizer.fit(first.train), Normalizer.fit(load_dataset(spec, (16, 4), "cross_entropy", seed=0).train)
    assert a.mean.tobytes() == b.mean.tobytes() and a.std.tobytes() == b.std.tobytes()


def test_the_generated_cache_keeps_the_newest_few(tmp_path, monkeypatch):
    from worker import data, datacache

    monkeypatch.setenv(datacache.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(data, "SYNTHETIC_CACHE_MIN_VALUES", 1)
    for seed in range(datacache.KEEP_GENERATED + 2):
        data._synthetic(20, 3, 2, seed)
    assert len(list(tmp_path.glob(".synthetic-v1*.x.npy"))) == datacache.KEEP_GENERATED
    x, _ = data._synthetic(20, 3, 2, datacache.KEEP_GENERATED + 1)   # the newest is still there
    assert isinstance(x, np.memmap)


def test_synthetic_without_a_writable_cache_is_drawn_in_memory(tmp_path, monkeypatch):
    from worker import data, datacache

    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    monkeypatch.setenv(datacache.CACHE_DIR_ENV, str(blocked / "cache"))
    monkeypatch.setattr(data, "SYNTHETIC_CACHE_MIN_VALUES", 1)
    x, y = data._synthetic(50, 4, 3, 1)
    assert not isinstance(x, np.memmap)
    np.testing.assert_array_equal(x, data._draw_synthetic(50, 4, 3, 1)[0])


def test_npz_with_validation_arrays(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((30, 4)).astype(np.float32), y=rng.integers(0, 2, 30),
             x_val=rng.standard_normal((7, 4)).astype(np.float32), y_val=rng.integers(0, 2, 7))
    ds = load_dataset(DataSpec(source=str(path)), (4, 2), "cross_entropy", seed=0)
    assert len(ds.train) == 30 and len(ds.val) == 7


def test_npy_directory_is_memory_mapped(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.standard_normal((100, 6)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.integers(0, 3, 100))
    ds = load_dataset(DataSpec(source=str(tmp_path), val_fraction=0.2), (6, 3), "cross_entropy", seed=0)
    assert isinstance(ds.train.x, np.memmap)
    x, y = ds.train.rows(np.array([3, 1]))
    np.testing.assert_array_equal(x, np.load(tmp_path / "x.npy")[ds.train.index[[3, 1]]])
    assert not isinstance(x, np.memmap)


@pytest.mark.parametrize("arrays,layers,message", [
    ({"x": np.zeros((5, 4), np.float32)}, (4, 2), "no array 'y'"),
    ({"x": np.zeros((5, 3), np.float32), "y": np.zeros(5, np.int64)}, (4, 2), "3 features"),
    ({"x": np.zeros((5, 4), np.float32), "y": np.zeros(4, np.int64)}, (4, 2), "5 rows"),
    ({"x": np.zeros((5, 4), np.float32), "y": np.full(5, 2)}, (4, 2), "labels span"),
    ({"x": np.zeros((5, 4), np.float32), "y": np.zeros(5, np.float32)}, (4, 2), "integer labels"),
])
def test_bad_data_is_refused_with_a_reason(tmp_path, arrays, layers, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset(DataSpec(source=str(path)), layers, "cross_entropy", seed=0)


def test_missing_and_corrupt_sources(tmp_path):
    with pytest.raises(DataError, match="neither a built-in"):
        load_dataset(DataSpec(source=str(tmp_path / "nope.npz")), (4, 2), "cross_entropy", 0)
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset(DataSpec(source=str(garbage)), (4, 2), "cross_entropy", 0)


def test_normalizer_standardises_the_training_split():
    ds = load_dataset(DataSpec(source="digits"), (64, 10), "cross_entropy", seed=0)
    norm = Normalizer.fit(ds.train, chunk=100)
    x = norm.apply(ds.train.rows(np.arange(len(ds.train)))[0])
    varying = ds.train.x[ds.train.index].std(axis=0) > 0
    np.testing.assert_allclose(x.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=0)[varying], 1, rtol=1e-3)


def test_fast_digits_reader_matches_scikit_learn():
    from sklearn.datasets import load_digits

    from worker.data import digits_arrays
    pixels, labels = digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(pixels, reference.data)
    np.testing.assert_array_equal(labels, reference.target)

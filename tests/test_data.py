"""CG datasets (data stage): write -> read round trip, appending/truncating, and the checks made when opening."""
import json

import h5py
import numpy as np
import pytest

from openmm_cgml.data import CGDataset, CGDatasetWriter, write_dataset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.systems import build_bead_spring


@pytest.fixture(scope="module")
def beadmap():
    built = build_bead_spring("chain", chain_length=12, minimize=False)
    return BeadMap.from_openmm(built.topology, built.system, atoms_per_bead=3)


def _frames(bm, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, bm.n_beads, 3)).astype(np.float32), np.full((n, 3), 2.5, np.float32), np.arange(n) * 2.0


def test_round_trip_is_exact(beadmap, tmp_path):
    pos, box, time = _frames(beadmap)
    path = write_dataset(str(tmp_path / "a.h5"), beadmap, pos, box, time, {"note": "x", "n": 3})
    with CGDataset(path) as ds:
        np.testing.assert_array_equal(ds.positions[:], pos)
        np.testing.assert_array_equal(ds.box, box)
        np.testing.assert_array_equal(ds.time, time)
        assert ds.beadmap.to_dict() == beadmap.to_dict() and ds.provenance == {"note": "x", "n": 3}
        assert ds.periodic and ds.n_frames == 6 and ds.n_beads == beadmap.n_beads
        assert ds.frame_interval_ps == 2.0
    # raw layout, read with h5py alone (the format documented at the top of data/dataset.py)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 1 and f.attrs["n_beads"] == beadmap.n_beads
        np.testing.assert_array_equal(f["positions"][:], pos)


def test_writer_appends_and_truncates(beadmap, tmp_path):
    pos, box, time = _frames(beadmap)
    path = str(tmp_path / "w.h5")
    with CGDatasetWriter.create(path, beadmap, {}, periodic=True) as writer:
        writer.append(pos[:4], box[:4], time[:4])
        writer.truncate(2)
        writer.append(pos[2:], box[2:], time[2:])
    with CGDataset(path) as ds:
        np.testing.assert_array_equal(ds.positions[:], pos)
        np.testing.assert_array_equal(ds.time, time)
    with CGDatasetWriter(path) as writer:
        with pytest.raises(ValueError, match="non-finite"):
            writer.append(np.full((1, beadmap.n_beads, 3), np.nan), box[:1], [99.0])
        with pytest.raises(ValueError, match="box of every frame"):
            writer.append(pos[:1], None, [99.0])


def _variant(src, dst, edit):
    import shutil

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        edit(f)
    return str(dst)


@pytest.mark.parametrize("name, edit, match", [
    ("no_time", lambda f: f.__delitem__("time"), "has no time"),
    ("short_time", lambda f: f["time"].resize(3, axis=0), "time has 3 entries but positions have 6 frames"),
    ("unordered_time", lambda f: f["time"].__setitem__(slice(0, 2), [4.0, 2.0]), "increasing"),
    ("short_box", lambda f: f["box"].resize(4, axis=0), r"box has shape \(4, 3\)"),
    ("no_box", lambda f: f.__delitem__("box"), "periodic but has no box"),
    ("bad_box", lambda f: f["box"].__setitem__(0, [0.0, 1.0, 1.0]), "positive"),
    ("no_beadmap", lambda f: f.__delitem__("beadmap"), "has no beadmap"),
    ("garbled_beadmap", lambda f: (f.__delitem__("beadmap"), f.__setitem__("beadmap", np.array(
        "{not json", dtype=h5py.string_dtype()))), "not valid JSON"),
    ("wrong_version", lambda f: f.attrs.__setitem__("format_version", 99), "format 1"),
])
def test_opening_refuses_inconsistent_files(beadmap, tmp_path, name, edit, match):
    pos, box, time = _frames(beadmap)
    good = write_dataset(str(tmp_path / "good.h5"), beadmap, pos, box, time)
    bad = _variant(good, tmp_path / f"{name}.h5", edit)
    with pytest.raises(ValueError, match=match):
        CGDataset(bad)


def test_beadmap_of_the_wrong_size_is_refused(beadmap, tmp_path):
    pos, box, time = _frames(beadmap)
    good = write_dataset(str(tmp_path / "good.h5"), beadmap, pos, box, time)
    built = build_bead_spring("chain", chain_length=12, minimize=False)
    other = BeadMap.from_openmm(built.topology, built.system, atoms_per_bead=2)
    assert other.n_beads != beadmap.n_beads

    def swap(f):
        del f["beadmap"]
        f["beadmap"] = np.array(json.dumps(other.to_dict()), dtype=h5py.string_dtype("utf-8"))

    bad = _variant(good, tmp_path / "bm.h5", swap)
    with pytest.raises(ValueError, match=f"bead map has {other.n_beads} beads but positions have {beadmap.n_beads}"):
        CGDataset(bad)


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        CGDataset(str(tmp_path / "nowhere.h5"))
    (tmp_path / "x.h5").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable HDF5"):
        CGDataset(str(tmp_path / "x.h5"))


def test_write_dataset_validates_shapes(beadmap, tmp_path):
    pos, box, time = _frames(beadmap)
    with pytest.raises(ValueError, match="positions must have shape"):
        write_dataset(str(tmp_path / "a.h5"), beadmap, pos[:, :-1], box, time)
    with pytest.raises(ValueError, match="time must have shape"):
        write_dataset(str(tmp_path / "a.h5"), beadmap, pos, box, time[:-1])
    with pytest.raises(ValueError, match="box must have shape"):
        write_dataset(str(tmp_path / "a.h5"), beadmap, pos, box[:-1], time)
    assert not (tmp_path / "a.h5").exists()

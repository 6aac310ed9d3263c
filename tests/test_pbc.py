"""Stage 0: periodic geometry (openmm_cgml.pbc) and unit stripping (openmm_cgml.units) against brute force."""
import itertools

import numpy as np
import pytest
import torch
from openmm import Vec3, unit

from openmm_cgml import pbc
from openmm_cgml.data.contacts import closest_approach
from openmm_cgml.units import UnitsError, strip_units

IMAGES = np.array(list(itertools.product((-1, 0, 1), repeat=3)), dtype=np.float64)  # the 27 neighbouring images


def brute_minimum_image(d, box_vectors, images=IMAGES):
    """The shortest of d + i a + j b + k c over the 27 neighbouring images (d (3,), box_vectors (3, 3) rows)."""
    candidates = d + images @ box_vectors
    return candidates[np.argmin(np.linalg.norm(candidates, axis=1))]


def test_minimum_image_matches_the_27_image_search():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(1.0, 3.0, size=(50, 3))  # one box per frame (NPT)
    d = rng.uniform(-1.0, 1.0, size=(50, 8, 3)) * boxes[:, None, :]  # up to one box length off
    got = pbc.minimum_image(d, boxes[:, None, :])
    expected = np.array([[brute_minimum_image(v, np.diag(b)) for v in frame] for frame, b in zip(d, boxes)])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.all(np.abs(got) <= 0.5 * boxes[:, None, :] + 1e-12)
    # one (3,) box for every vector; no box: unchanged
    np.testing.assert_allclose(pbc.minimum_image(d[0], boxes[0]),
                               [brute_minimum_image(v, np.diag(boxes[0])) for v in d[0]], atol=1e-12)
    assert pbc.minimum_image(d, None) is d
    # the torch version (eager and TorchScript) gives the same vectors
    scripted = torch.jit.script(pbc.minimum_image_torch)
    for fn in (pbc.minimum_image_torch, scripted):
        out = fn(torch.as_tensor(d), torch.as_tensor(boxes[:, None, :]))
        np.testing.assert_allclose(out.numpy(), expected, atol=1e-12)
    assert torch.equal(scripted(torch.as_tensor(d), None), torch.as_tensor(d))


def test_triclinic_minimum_image_matches_the_27_image_search():
    rng = np.random.default_rng(1)
    box = np.array([[2.0, 0.0, 0.0], [0.4, 2.2, 0.0], [-0.3, 0.5, 2.5]])  # reduced form, as OpenMM keeps it
    d = rng.uniform(-3.0, 3.0, size=(400, 3))
    got = pbc.minimum_image_triclinic(d, box)
    lattice = np.linalg.solve(box.T, (got - d).T).T  # got - d must be a whole number of box vectors
    np.testing.assert_allclose(lattice, np.round(lattice), atol=1e-9)
    expected = np.array([brute_minimum_image(v, box) for v in got])
    short = np.linalg.norm(expected, axis=1) < 0.45 * 2.0  # within half the narrowest width: exact
    assert short.sum() > 100
    np.testing.assert_allclose(got[short], expected[short], atol=1e-12)
    # a diagonal box gives exactly the orthorhombic minimum image; per-frame boxes (T, 3, 3) with (T, n, 3)
    diag = np.diag([1.5, 2.0, 2.5])
    np.testing.assert_array_equal(pbc.minimum_image_triclinic(d, diag), pbc.minimum_image(d, np.diag(diag)))
    frames = d.reshape(4, 100, 3)
    per_frame = pbc.minimum_image_triclinic(frames, np.stack([box] * 4))
    np.testing.assert_array_equal(per_frame.reshape(-1, 3), got)


def test_wrap_gives_the_same_point_in_0_to_L():
    rng = np.random.default_rng(2)
    box = np.array([1.7, 2.0, 2.9])
    x = rng.uniform(-10.0, 10.0, size=(500, 3))
    x[0] = [-1e-20, 0.0, 2.9]  # rounds to exactly L with a naive mod; L itself is the image 0
    w = pbc.wrap(x, box)
    assert np.all((w >= 0.0) & (w < box))
    np.testing.assert_allclose(w[0], [0.0, 0.0, 0.0])
    shifts = (x - w) / box
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-9)
    wt = torch.jit.script(pbc.wrap_torch)(torch.as_tensor(x), torch.as_tensor(box))
    assert bool(((wt >= 0) & (wt < torch.as_tensor(box))).all())
    np.testing.assert_allclose(wt.numpy(), w, atol=1e-12)
    f32 = pbc.wrap(x.astype(np.float32), box.astype(np.float32))
    assert f32.dtype == np.float32 and np.all((f32 >= 0) & (f32 < box.astype(np.float32)))


def test_unwrap_recovers_a_random_walk_across_many_box_crossings():
    rng = np.random.default_rng(3)
    box = np.array([1.0, 1.2, 1.5])
    steps = rng.uniform(-0.45, 0.45, size=(400, 6, 3)) * box  # always under half a box edge per frame
    steps[:, 0, 0] = 0.4  # one particle drifts steadily: 160 boxes along x
    x = np.cumsum(steps, axis=0) + rng.uniform(0, 1, size=(1, 6, 3)) * box
    wrapped = pbc.wrap(x, box)
    crossings = np.abs(np.floor(x / box)[-1] - np.floor(x / box)[0])
    assert crossings.max() >= 100 and (crossings >= 3).sum() >= 6
    u = pbc.unwrap(wrapped, box)
    np.testing.assert_allclose(u, x - (x[0] - wrapped[0]), atol=1e-9)
    np.testing.assert_allclose(pbc.unwrap(x, box), x, atol=1e-9)  # already unwrapped: unchanged
    np.testing.assert_allclose(pbc.unwrap(wrapped, np.tile(box, (400, 1))), u, atol=1e-12)


def test_unwrap_with_one_box_per_frame_takes_each_minimum_image_step():
    rng = np.random.default_rng(4)
    n_frames = 60
    boxes = 2.0 * (1.0 + 0.05 * np.sin(np.arange(n_frames) / 5.0))[:, None] * np.array([1.0, 1.1, 0.9])
    x = np.cumsum(rng.normal(scale=0.25, size=(n_frames, 5, 3)), axis=0)
    wrapped = pbc.wrap(x, boxes[:, None, :])
    u = pbc.unwrap(wrapped, boxes)
    np.testing.assert_array_equal(u[0], wrapped[0])
    for t in range(1, n_frames):  # step t is the 27-image minimum of the wrapped step, in frame t's box
        expected = [brute_minimum_image(v, np.diag(boxes[t])) for v in wrapped[t] - wrapped[t - 1]]
        np.testing.assert_allclose(u[t] - u[t - 1], expected, atol=1e-9)
    with pytest.raises(ValueError, match="box must have shape"):
        pbc.unwrap(wrapped, boxes[:-1])


def test_remove_centroid_plain_and_mass_weighted():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 7, 3)) + 3.0
    masses = rng.uniform(1.0, 30.0, size=7)
    com = np.array([[sum(masses[i] * frame[i] for i in range(7)) / masses.sum()] for frame in x])
    np.testing.assert_allclose(pbc.remove_centroid(x, masses), x - com, atol=1e-12)
    np.testing.assert_allclose(pbc.remove_centroid(x), x - x.sum(axis=1, keepdims=True) / 7, atol=1e-12)
    xt = torch.as_tensor(x)
    np.testing.assert_allclose(pbc.remove_centroid(xt, torch.as_tensor(masses)).numpy(), x - com, atol=1e-12)
    np.testing.assert_allclose(pbc.remove_centroid(xt).numpy(), pbc.remove_centroid(x), atol=1e-12)
    # per graph of a batch (TorchScript): each graph's rows lose their own centroid
    batch = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    y = torch.as_tensor(x[0])
    out = torch.jit.script(pbc.remove_centroids_by_graph)(y, batch, 3)
    for g in range(3):
        rows = batch == g
        np.testing.assert_allclose(out[rows].numpy(), x[0][rows.numpy()] - x[0][rows.numpy()].mean(axis=0), atol=1e-12)


def test_closest_approach_matches_brute_force():
    rng = np.random.default_rng(6)
    box = np.array([[2.0, 2.1, 2.2]] * 3)
    x = rng.uniform(-2, 4, size=(3, 30, 3))  # unwrapped: pairs up to three boxes apart
    far = np.array(list(itertools.product(range(-4, 5), repeat=3)), dtype=np.float64)
    types = rng.integers(0, 3, size=30)
    bonds = np.array([[0, 1], [5, 2], [7, 8]])
    got = closest_approach(x, box, types, 4, bonds, cutoff=0.9)
    expected = np.full((4, 4), np.inf)
    bonded = {tuple(sorted(p)) for p in bonds.tolist()}
    for t in range(3):
        for i in range(30):
            for j in range(i + 1, 30):
                if (i, j) in bonded:
                    continue
                r = np.linalg.norm(brute_minimum_image(x[t, i] - x[t, j], np.diag(box[t]), far))
                if r < 0.9:
                    a, b = sorted((types[i], types[j]))
                    expected[a, b] = expected[b, a] = min(expected[a, b], r)
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.isinf(got[3]).all()  # a type with no beads is never seen


def test_strip_units_converts_quantities_and_plain_numbers():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(strip_units(x * unit.angstrom, unit.nanometer, "x"), x / 10.0)
    np.testing.assert_array_equal(strip_units(x, unit.nanometer, "x"), x)  # plain: already in nm
    assert strip_units(2.5, unit.picosecond, "dt").shape == () and float(strip_units(2.5, unit.picosecond, "dt")) == 2.5
    vecs = [Vec3(1.0, 2.0, 3.0), Vec3(4.0, 5.0, 6.0)]
    np.testing.assert_allclose(strip_units(vecs, unit.nanometer, "x", shape=(None, 3)), x + 1.0)
    np.testing.assert_allclose(strip_units(vecs * unit.angstrom, unit.nanometer, "x"), (x + 1.0) / 10.0)
    assert strip_units(x * unit.nanometer, unit.nanometer, "x", dtype=np.float32).dtype == np.float32
    quantity = x * unit.nanometer
    out = strip_units(quantity, unit.nanometer, "x")
    out[0, 0] = 99.0
    assert quantity[0][0] == 0.0 * unit.nanometer  # a new array, never a view of the caller's data


@pytest.mark.parametrize("value, options, error, words", [
    (np.zeros((4, 2)), {"shape": (None, 3)}, ValueError, "box_vectors must have shape (N, 3)"),
    (np.zeros(3) * unit.picosecond, {}, UnitsError, "box_vectors must be a length"),
    (np.zeros(3), {"require_units": True}, UnitsError, "box_vectors must carry units"),
    ("three", {}, UnitsError, "box_vectors must be numeric"),
    ([1.0, np.nan, 2.0], {"finite": True}, ValueError, "box_vectors contains NaN"),
])
def test_strip_units_bad_input_gets_one_line_naming_the_argument(value, options, error, words):
    with pytest.raises(error) as info:
        strip_units(value, unit.nanometer, "box_vectors", **options)
    message = str(info.value)
    assert words in message and "\n" not in message
    assert isinstance(info.value, ValueError)  # the CLI turns ValueError into a one-line message

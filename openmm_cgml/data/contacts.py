"""The collision yardstick: closest non-bonded approach per bead-type pair in CG data.

A learned run in which two beads come closer than (a fraction of) what the all-atom reference ever showed has a
*collision*. Training measures the closest approaches in its datasets and writes them next to the model
(:data:`CONTACTS_FILE`, by :func:`write_contacts`); analysis turns them into collision thresholds
(:func:`openmm_cgml.analysis.collisions.collision_thresholds`).

Where this lives, and why: the computation is needed by ``training`` (which writes the file) and by ``analysis``
(which reads it). A stage never imports a later one, and ``analysis`` comes after ``training``, so it cannot live
in ``analysis``. It is a statistic of CG datasets, so it belongs to the ``data`` stage, which both may import;
it sits here, outside the HDF5 I/O module :mod:`openmm_cgml.data.dataset`. :func:`closest_approach` is the pure
array function; :func:`contact_distances` and :func:`write_contacts` apply it to dataset files.
"""
import json
import os

import numpy as np

from ..pbc import minimum_image, wrap
from .dataset import CGDataset

#: Written next to a model by training: closest non-bonded approach per bead-type pair in the training data.
CONTACTS_FILE = "contacts.json"
#: Pairs farther apart than this (nm) are not searched; a type pair never this close is reported as unseen.
CONTACT_CUTOFF_NM = 2.0
#: Bin edges (nm) of the pooled non-bonded RDFs written with the contacts (``rdf_g``): where a type pair's data
#: first show density is what :func:`rdf_onset` reads from them.
RDF_EDGES_NM = np.round(np.arange(0.0, 1.0 + 1e-9, 0.005), 3)


def closest_approach(positions, box, types, n_types: int, exclude_pairs=None,
                     cutoff: float = CONTACT_CUTOFF_NM) -> np.ndarray:
    """Closest distance between beads of each type pair over all frames (periodic k-d tree, minimum image).

    Parameters
    ----------
    positions : (T, N, 3) array, nm
        Frames (wrapped or unwrapped).
    box : None or (T, 3) array, nm
        Orthorhombic edge lengths per frame; None without periodic boundaries.
    types : (N,) int array
        Type index of each bead, in [0, n_types).
    n_types : int
        K, the size of the returned table.
    exclude_pairs : (P, 2) int array, optional
        Bead pairs never counted (the CG bonds).
    cutoff : float, nm
        Search radius.

    Returns
    -------
    (K, K) float64 array, nm
        Symmetric; ``inf`` for type pairs never closer than ``cutoff``.
    """
    return pair_statistics(positions, box, types, n_types, exclude_pairs, cutoff)[0]


def pair_statistics(positions, box, types, n_types: int, exclude_pairs=None, cutoff: float = CONTACT_CUTOFF_NM,
                    edges=RDF_EDGES_NM):
    """:func:`closest_approach` (same arguments), plus the non-bonded pair counts per type pair in the distance
    bins ``edges`` (nm) and what an ideal gas of the same beads would put there (periodic frames only; zeros
    otherwise), both (K, K, len(edges) - 1) summed over frames and symmetric: their ratio is the RDF. The ideal
    count includes the excluded (bonded) pairs, so a type pair that bonds reads slightly low at bond lengths."""
    from scipy.spatial import cKDTree

    edges = np.asarray(edges, dtype=np.float64)
    counts = np.zeros((n_types, n_types, len(edges) - 1))
    ideal = np.zeros_like(counts)
    shells = 4.0 / 3.0 * np.pi * np.diff(edges ** 3)
    types = np.asarray(types, dtype=np.int64)
    present = np.bincount(types, minlength=n_types).astype(np.float64)
    ordered_pairs = np.outer(present, present) - np.diag(present)  # i != j, per type pair
    n = types.shape[0]
    excluded = np.zeros(0, dtype=np.int64)
    if exclude_pairs is not None and len(exclude_pairs):
        pairs = np.sort(np.asarray(exclude_pairs, dtype=np.int64).reshape(-1, 2), axis=1)
        excluded = pairs[:, 0] * n + pairs[:, 1]
    table = np.full((n_types, n_types), np.inf)
    for t in range(len(positions)):
        x = np.asarray(positions[t], dtype=np.float64)
        b = None if box is None else np.asarray(box[t], dtype=np.float64)
        if b is not None:
            ideal += ordered_pairs[:, :, None] * shells / float(np.prod(b))
        tree = cKDTree(x if b is None else wrap(x, b), boxsize=b)
        pairs = tree.query_pairs(cutoff, output_type="ndarray")
        if pairs.size == 0:
            continue
        i, j = pairs.min(axis=1), pairs.max(axis=1)
        keep = ~np.isin(i * n + j, excluded)
        i, j = i[keep], j[keep]
        d = np.linalg.norm(minimum_image(x[i] - x[j], b), axis=1)
        ti, tj = np.minimum(types[i], types[j]), np.maximum(types[i], types[j])
        np.minimum.at(table, (ti, tj), d)
        if b is not None:  # each pair counts as (a, b) and (b, a), like the ordered pairs of the ideal count
            binned = np.digitize(d, edges) - 1
            ok = (binned >= 0) & (binned < len(shells))
            np.add.at(counts, (ti[ok], tj[ok], binned[ok]), 1.0)
            np.add.at(counts, (tj[ok], ti[ok], binned[ok]), 1.0)
    return np.minimum(table, table.T), counts, ideal


def longest_bond(positions, box, types, n_types: int, bonds) -> np.ndarray:
    """Longest CG bond (minimum image, nm) per bead-type pair over all frames: (K, K), 0 where no bond joins
    the pair. Arguments as in :func:`closest_approach`; ``bonds`` (P, 2) the bonded bead pairs."""
    table = np.zeros((n_types, n_types))
    b = np.asarray(bonds, dtype=np.int64).reshape(-1, 2)
    if not len(b):
        return table
    types = np.asarray(types, dtype=np.int64)
    ti, tj = types[b[:, 0]], types[b[:, 1]]
    for t in range(len(positions)):
        x = np.asarray(positions[t], dtype=np.float64)
        d = np.linalg.norm(minimum_image(x[b[:, 0]] - x[b[:, 1]], None if box is None else np.asarray(box[t])), axis=1)
        np.maximum.at(table, (ti, tj), d)
    return np.maximum(table, table.T)


def longest_step(positions, types, n_types: int, lag: int) -> np.ndarray:
    """Longest displacement (nm) of a bead over ``lag`` frames, per bead type: (K,), 0 for types with no bead.
    ``positions`` (T, N, 3) unwrapped nm (as CG datasets store them, so no minimum image is needed)."""
    x = np.asarray(positions, dtype=np.float64)
    table = np.zeros(n_types)
    if lag < 1 or len(x) <= lag:
        return table
    distance = np.linalg.norm(x[lag:] - x[:-lag], axis=2).max(axis=0)
    np.maximum.at(table, np.asarray(types, dtype=np.int64), distance)
    return table


def contact_distances(paths, max_frames: int = 200, frame_counts=None, timestep_ps: float = 0.0) -> dict:
    """Closest approach (nm) of non-bonded bead pairs and longest CG bond per bead-type pair, over CG datasets.

    Returns ``{"type_names": [...], "min_distance_nm": K x K list, "max_bond_nm": K x K list}`` with ``None``
    for type pairs never seen within 2 nm (never bonded), and for periodic data ``"rdf_edges_nm"`` (bins,
    :data:`RDF_EDGES_NM`) and ``"rdf_g"`` (K x K x bins: the non-bonded RDF of each type pair pooled over the
    files, i.e. their pair counts over their ideal-gas counts; None where a pair has no ideal count). Frames are
    taken evenly from each file (at most ``max_frames`` per file), from its first ``frame_counts[i]`` frames if
    given (the part a model was trained on). With ``timestep_ps`` > 0 (a model step, a multiple of every file's
    frame interval) it adds ``"max_step_nm"``: per bead type, the longest displacement over one such step in all
    those frames (None for a type no file has).
    """
    names: list = []
    tables = []
    paths = [paths] if isinstance(paths, str) else list(paths)
    for i, path in enumerate(paths):
        with CGDataset(path) as ds:
            bm = ds.beadmap
            names += [n for n in bm.type_names if n not in names]
            types = np.asarray([names.index(bm.type_names[t]) for t in bm.bead_types], dtype=np.int64)
            n_frames = ds.n_frames if frame_counts is None else min(int(frame_counts[i]), ds.n_frames)
            frames = np.linspace(0, n_frames - 1, min(max_frames, n_frames)).astype(int)
            box = None if ds.box is None else ds.box[frames]
            lag = int(round(timestep_ps / ds.frame_interval_ps)) if timestep_ps > 0 else 0
            if lag and abs(lag * ds.frame_interval_ps - timestep_ps) > 1e-6 * timestep_ps:
                raise ValueError(f"{path}: a {timestep_ps:g} ps step is not a multiple of its "
                                 f"{ds.frame_interval_ps:g} ps frame interval")
            # the step statistic needs every frame, read once; the pair statistics take their sample from it
            every = ds.positions[:n_frames] if lag else None
            positions = [ds.positions[t] for t in frames] if every is None else every[frames]
            steps = longest_step(every, types, len(names), lag) if lag else np.zeros(len(names))
            tables.append(pair_statistics(positions, box, types, len(names), bm.bonds)
                          + (longest_bond(positions, box, types, len(names), bm.bonds), steps, len(names)))
    k = len(names)
    best, longest, step = np.full((k, k), np.inf), np.zeros((k, k)), np.zeros(k)
    counts, ideal = np.zeros((k, k, len(RDF_EDGES_NM) - 1)), np.zeros((k, k, len(RDF_EDGES_NM) - 1))
    for table, pair_counts, pair_ideal, bonds, steps, size in tables:
        best[:size, :size] = np.minimum(best[:size, :size], table)
        longest[:size, :size] = np.maximum(longest[:size, :size], bonds)
        step[:size] = np.maximum(step[:size], steps)
        counts[:size, :size] += pair_counts
        ideal[:size, :size] += pair_ideal
    matrix = [[float(best[a, b]) if np.isfinite(best[a, b]) else None for b in range(k)] for a in range(k)]
    bond_matrix = [[float(longest[a, b]) if longest[a, b] > 0 else None for b in range(k)] for a in range(k)]
    out = {"type_names": names, "min_distance_nm": matrix, "max_bond_nm": bond_matrix}
    if timestep_ps > 0:
        out["max_step_nm"] = [float(s) if s > 0 else None for s in step]
    if ideal.any():
        g = np.round(counts / np.where(ideal > 0, ideal, 1.0), 4)
        out["rdf_edges_nm"] = [float(e) for e in RDF_EDGES_NM]
        out["rdf_g"] = [[g[a, b].tolist() if ideal[a, b].any() else None for b in range(k)] for a in range(k)]
    return out


def rdf_onset(contacts: dict, g_min: float) -> "dict | None":
    """Where each type pair's pooled training RDF (``contacts["rdf_g"]``) first reaches ``g_min``: the lower edge
    (nm) of that bin, as a contacts-style dict ``{"type_names": ..., "onset_nm": K x K}`` for
    :func:`contact_table` (None where a pair never reaches it); None when ``contacts`` has no RDFs.

    Below the onset the data hold almost no pairs (for ``g_min`` = 0.1, under a tenth of an ideal gas's), so a
    learned score has next to nothing to learn from there; unlike the closest approach, one rare contact does not
    move it."""
    if "rdf_g" not in contacts:
        return None
    edges = np.asarray(contacts["rdf_edges_nm"])
    onset = [[None if g is None or max(g) < g_min else float(edges[int(np.argmax(np.asarray(g) >= g_min))])
              for g in row] for row in contacts["rdf_g"]]
    return {"type_names": contacts["type_names"], "onset_nm": onset}


def rdf_wall(contacts: dict, pairs) -> "dict | None":
    """Repulsive walls fitted to the rising edge of the pooled training RDFs (``contacts["rdf_g"]``) of the
    residue pairs ``pairs`` (e.g. ``["LI-LI"]``): below r1, where g first reaches 1, ln g(r) ~ k (r - r1) is
    fitted by least squares to the bins holding pairs, so the pair potential of mean force is a linear wall of
    force k kT/nm. Returns ``{"type_names", "slope_per_nm", "reach_nm"}`` (K x K, None where a pair is not
    listed or its edge holds fewer than 3 filled bins or does not rise), None without RDFs.

    A learned score has almost no data below the onset (a few Li-Li pairs in thousands of frames), so it cannot
    learn the repulsion there; a fit over the whole edge does not hinge on one rare contact."""
    if "rdf_g" not in contacts:
        return None
    names = contacts["type_names"]
    wanted = {tuple(sorted(str(p).upper().split("-"))) for p in pairs}
    centres = np.asarray(contacts["rdf_edges_nm"])[:-1] + 0.5 * np.diff(contacts["rdf_edges_nm"])
    slope = [[None] * len(names) for _ in names]
    reach = [[None] * len(names) for _ in names]
    for a, name_a in enumerate(names):
        for b, name_b in enumerate(names):
            g = contacts["rdf_g"][a][b]
            if g is None or tuple(sorted((name_a.split(":")[0], name_b.split(":")[0]))) not in wanted:
                continue
            g = np.asarray(g)
            top = int(np.argmax(g >= 1.0)) if (g >= 1.0).any() else 0
            filled = g[:top] > 0
            if filled.sum() < 3:
                continue
            k, intercept = np.polyfit(centres[:top][filled], np.log(g[:top][filled]), 1)
            if k > 0:
                slope[a][b], reach[a][b] = float(k), float(-intercept / k)
    return {"type_names": names, "slope_per_nm": slope, "reach_nm": reach}


def contact_table(contacts: dict, type_names, key: str = "min_distance_nm",
                  unseen: "float | None" = None) -> "np.ndarray | None":
    """(K, K) table ``key`` (nm) of a :func:`contact_distances` dict for the bead types ``type_names``: the
    closest approaches (``"min_distance_nm"``) or the longest bonds (``"max_bond_nm"``).

    A type pair the data never showed gets ``unseen``, by default the smallest known distance (the strictest
    collision yardstick); None when the dict has no such table or knows none of the pairs.
    """
    if key not in contacts:
        return None
    names, table = contacts["type_names"], contacts[key]
    k = len(type_names)
    out = np.full((k, k), np.inf)
    for a, name_a in enumerate(type_names):
        for b, name_b in enumerate(type_names):
            if name_a in names and name_b in names:
                value = table[names.index(name_a)][names.index(name_b)]
                if value is not None:
                    out[a, b] = value
    finite = out[np.isfinite(out)]
    if not finite.size:
        return None
    return np.where(np.isfinite(out), out, finite.min() if unseen is None else unseen)


def read_contacts(model_dir: str) -> "dict | None":
    """The :data:`CONTACTS_FILE` dict of a model directory, or None when it has none."""
    path = os.path.join(model_dir, CONTACTS_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def step_table(contacts: dict, type_names) -> "np.ndarray | None":
    """(K,) longest one-step displacement (nm, ``"max_step_nm"`` of a :func:`contact_distances` dict) per type of
    ``type_names``; a type the data never showed gets the longest of all. None when the dict has no such table."""
    steps = contacts.get("max_step_nm")
    if steps is None:
        return None
    known = dict(zip(contacts["type_names"], steps))
    longest = max(s for s in steps if s is not None)
    return np.asarray([longest if known.get(name) is None else known[name] for name in type_names])


def write_contacts(model_dir: str, paths, max_frames: int = 200, timestep_ps: float = 0.0) -> str:
    """Write :func:`contact_distances` of the datasets ``paths`` to ``model_dir/contacts.json`` (atomically:
    a temporary file, then a rename, so an interrupted run never leaves a half-written file). Returns the path."""
    contacts = contact_distances(paths, max_frames, timestep_ps=timestep_ps)
    path = os.path.join(model_dir, CONTACTS_FILE)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(contacts, handle)
    os.replace(tmp, path)
    return path

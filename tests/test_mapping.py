"""BeadMap: partition validity, chemical bead types, PBC-aware centres of mass, serialisation, bad input."""
import itertools
from collections import deque

import mdtraj
import numpy as np
import openmm
import pytest
from openmm import app, unit

from openmm_cgml.mapping import BeadMap
from openmm_cgml.systems import peo_litfsi_system, peo_litfsi_topology

BOX = 3.0  # nm


@pytest.fixture(scope="module")
def peo():
    top = peo_litfsi_topology(3, 6, 2)
    top.setPeriodicBoxVectors(np.eye(3) * BOX * unit.nanometer)
    system = peo_litfsi_system(top)
    return top, system, BeadMap.from_openmm(top, system, atoms_per_bead=7, whole_residues=("TFS",))


def tree_positions(top, rng, box=BOX):
    """Positions (nm) with every bonded pair 0.12 nm apart, molecules spread through the box."""
    n = top.getNumAtoms()
    adjacency = [[] for _ in range(n)]
    for a, b in top.bonds():
        adjacency[a.index].append(b.index)
        adjacency[b.index].append(a.index)
    x = np.full((n, 3), np.nan)
    for start in range(n):
        if not np.isnan(x[start, 0]):
            continue
        x[start] = rng.uniform(0, box, 3)
        queue = deque([start])
        while queue:
            a = queue.popleft()
            for b in adjacency[a]:
                if np.isnan(x[b, 0]):
                    step = rng.normal(size=3)
                    x[b] = x[a] + 0.12 * step / np.linalg.norm(step)
                    queue.append(b)
    return x


def numpy_centres(bm, x, masses):
    return np.array([np.average(x[atoms], axis=0, weights=masses[atoms]) for atoms in bm.bead_atoms])


def is_connected(atoms, bonds):
    atoms = set(atoms.tolist())
    adjacency = {a: set() for a in atoms}
    for i, j in bonds:
        if i in atoms and j in atoms:
            adjacency[i].add(j)
            adjacency[j].add(i)
    start = next(iter(atoms))
    seen, queue = {start}, [start]
    while queue:
        for b in adjacency[queue.pop()] - seen:
            seen.add(b)
            queue.append(b)
    return seen == atoms


def test_partition_is_valid(peo):
    top, system, bm = peo
    counts = np.bincount(bm.atom_to_bead, minlength=bm.n_beads)
    assert counts.sum() == top.getNumAtoms() and np.all(counts >= 1)
    assert sorted(np.concatenate(bm.bead_atoms).tolist()) == list(range(top.getNumAtoms()))
    bonds = [(a.index, b.index) for a, b in top.bonds()]
    assert all(is_connected(atoms, bonds) for atoms in bm.bead_atoms)
    total = sum(system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles()))
    assert bm.bead_masses.sum() == pytest.approx(total, rel=1e-12)
    residues = [a.residue.name for a in top.atoms()]
    for atoms in bm.bead_atoms:
        names = {residues[a] for a in atoms}
        if names & {"LI", "TFS"}:  # ions: exactly one whole residue per bead
            assert len(names) == 1 and len(atoms) in (1, 15)
    assert sum(len(a) == 1 for a in bm.bead_atoms) == 2  # the two Li+
    # CG bonds are exactly the bead pairs joined by an atom bond
    expected = {tuple(sorted((bm.atom_to_bead[i], bm.atom_to_bead[j]))) for i, j in bonds}
    assert {tuple(p) for p in bm.bonds.tolist()} == {p for p in expected if p[0] != p[1]}


def _label_isomorphic(g1, g2):
    """Brute-force check that two small labelled graphs are isomorphic (independent of the WL hash)."""
    if sorted(g1["atom_types"]) != sorted(g2["atom_types"]) or len(g1["bonds"]) != len(g2["bonds"]):
        return False
    n = len(g1["atom_types"])
    e1 = {frozenset(b[:2]) for b in g1["bonds"]}
    e2 = {frozenset(b[:2]) for b in g2["bonds"]}
    for perm in itertools.permutations(range(n)):
        if all(g1["atom_types"][i] == g2["atom_types"][perm[i]] for i in range(n)) and \
                {frozenset((perm[i], perm[j])) for i, j in e1} == e2:
            return True
    return False


def test_bead_types_follow_chemistry(peo):
    top, system, bm = peo
    # METIS cuts the methyl-capped chains into repeat units: interior units share one type, the caps another.
    peo_types = [bm.type_names[t] for t, s in zip(bm.bead_types, bm.bead_species()) if s == "PEO"]
    assert len(set(peo_types)) == 2
    assert sum(name.startswith("PEO:C2H4O-") for name in peo_types) == 3 * 5
    assert len({bm.type_names[t] for t, s in zip(bm.bead_types, bm.bead_species()) if s != "PEO"}) == 2
    # Independent check: beads of one type have isomorphic labelled atom graphs, different types do not.
    graphs = bm.type_graphs
    for i, j in itertools.combinations(range(len(graphs)), 2):
        if len(graphs[i]["elements"]) <= 8 and len(graphs[j]["elements"]) <= 8:
            assert not _label_isomorphic(graphs[i], graphs[j])
    # the same chemistry mapped again (another molecule count) gets the same type names
    top2 = peo_litfsi_topology(1, 6, 1)
    bm2 = BeadMap.from_openmm(top2, peo_litfsi_system(top2), atoms_per_bead=7, whole_residues=("TFS",))
    assert set(bm2.type_names) == set(bm.type_names)


def test_type_graph_matches_a_bead(peo):
    top, system, bm = peo
    atoms = list(top.atoms())
    for t, graph in enumerate(bm.type_graphs):
        b = int(np.flatnonzero(bm.bead_types == t)[0])
        members = bm.bead_atoms[b]
        assert sorted(graph["elements"]) == sorted(atoms[a].element.symbol for a in members)
        assert sum(graph["masses"]) == pytest.approx(bm.bead_masses[b])
        assert len(graph["bonds"]) == sum(a.index in members and c.index in members for a, c in top.bonds())


def test_centres_match_numpy_and_survive_pbc_splits(peo):
    top, system, bm = peo
    rng = np.random.default_rng(3)
    x = tree_positions(top, rng)
    masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(len(x))])
    reference = numpy_centres(bm, x, masses)
    assert np.allclose(bm.map_positions(x), reference, atol=1e-12)
    assert np.allclose(bm.map_positions(x * unit.nanometer), reference, atol=1e-12)
    assert np.allclose(bm.map_positions((x * 10) * unit.angstrom), reference, atol=1e-12)
    # wrap every atom into the box: molecules (and beads) are split across the boundary
    for box in (np.eye(3) * BOX, np.array([[BOX, 0, 0], [0.6, BOX, 0], [-0.4, 0.9, BOX]])):
        shifts = rng.integers(-2, 3, size=(len(x), 3))
        split = x + shifts @ box
        mapped = bm.map_positions(split, box * unit.nanometer)
        delta = mapped - reference
        frac = np.linalg.solve(box.T, delta.T).T  # each bead moved by a whole lattice vector only
        assert np.allclose(frac, np.round(frac), atol=1e-9)
        # bonded beads stay adjacent (molecules whole): CG bond lengths as in the unsplit frame
        lengths = np.linalg.norm(mapped[bm.bonds[:, 0]] - mapped[bm.bonds[:, 1]], axis=1)
        ref = np.linalg.norm(reference[bm.bonds[:, 0]] - reference[bm.bonds[:, 1]], axis=1)
        assert np.allclose(lengths, ref, atol=1e-9)


def test_trajectory_mapping_matches_frames_and_mdtraj(peo, tmp_path):
    top, system, bm = peo
    rng = np.random.default_rng(5)
    frames = np.stack([tree_positions(top, rng) for _ in range(3)]).astype(np.float32)
    traj = mdtraj.Trajectory(frames, mdtraj.Topology.from_openmm(top),
                             unitcell_lengths=np.full((3, 3), BOX), unitcell_angles=np.full((3, 3), 90.0))
    mapped = bm.map_trajectory(traj)
    assert mapped.shape == (3, bm.n_beads, 3) and mapped.dtype == np.float32
    for t in range(3):
        assert np.allclose(mapped[t], bm.map_positions(frames[t].astype(np.float64), np.eye(3) * BOX), atol=1e-5)
    # mdtraj's centre of mass of one whole bead (element masses equal the force field's here)
    for b in (0, 1, bm.n_beads - 1):
        sub = traj.atom_slice(bm.bead_atoms[b])
        sub.unitcell_vectors = None
        assert np.allclose(mdtraj.compute_center_of_mass(sub), bm.map_trajectory(traj)[:, b], atol=2e-4)


def test_json_and_cg_topology_round_trip(peo, tmp_path):
    top, system, bm = peo
    bm.to_json(tmp_path / "map.json")
    again = BeadMap.from_json(tmp_path / "map.json")
    assert again.to_dict() == bm.to_dict()
    assert np.array_equal(again.bonds, bm.bonds) and again.bead_species() == bm.bead_species()
    cg_top = bm.to_topology(box_vectors=np.eye(3) * BOX)
    assert cg_top.getNumAtoms() == bm.n_beads and cg_top.getNumBonds() == len(bm.bonds)
    assert cg_top.getNumChains() == len(set(bm.bead_molecule.tolist()))
    rng = np.random.default_rng(0)
    xyz = bm.map_positions(tree_positions(top, rng))
    with open(tmp_path / "cg.pdb", "w") as f:
        app.PDBFile.writeFile(cg_top, xyz * 10 * unit.angstrom, f)
    dcd = app.DCDFile(open(tmp_path / "cg.dcd", "wb"), cg_top, 1.0 * unit.picosecond)
    dcd.writeModel(xyz * unit.nanometer)
    dcd._file.close()
    traj = mdtraj.load(str(tmp_path / "cg.dcd"), top=str(tmp_path / "cg.pdb"))
    assert traj.n_atoms == bm.n_beads and traj.n_frames == 1
    assert np.allclose(traj.xyz[0], xyz, atol=1e-3)


def test_a_user_system_from_a_force_field():
    """Any OpenMM Topology + System works: TIP3P water from Modeller, one bead per molecule."""
    ff = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(app.Topology(), [])
    modeller.addSolvent(ff, boxSize=openmm.Vec3(1.2, 1.2, 1.2) * unit.nanometer)
    system = ff.createSystem(modeller.topology, nonbondedMethod=app.PME, rigidWater=False)
    bm = BeadMap.from_openmm(modeller.topology, system, atoms_per_bead=3)
    n_water = modeller.topology.getNumResidues()
    assert bm.n_beads == n_water and len(bm.type_names) == 1 and bm.periodic
    assert np.allclose(bm.bead_masses, 18.015, atol=0.01)
    box = modeller.topology.getPeriodicBoxVectors()
    x = modeller.positions
    assert bm.map_positions(x, box).shape == (n_water, 3)


def test_bad_input_gets_one_line_errors(peo, tmp_path):
    top, system, bm = peo
    bare = app.Topology()
    chain = bare.addChain()
    residue = bare.addResidue("MOL", chain)
    for _ in range(3):
        bare.addAtom("C", app.Element.getBySymbol("C"), residue)
    bare_system = openmm.System()
    for _ in range(3):
        bare_system.addParticle(12.0)
    with pytest.raises(ValueError, match="no bonds"):
        BeadMap.from_openmm(bare, bare_system)
    for bad in (0, 0.5, -1):
        with pytest.raises(ValueError, match="atoms_per_bead"):
            BeadMap.from_openmm(top, system, atoms_per_bead=bad)
    with pytest.raises(ValueError, match="particles"):
        BeadMap.from_openmm(bare, system)
    with pytest.raises(ValueError, match="atoms"):
        bm.map_positions(np.zeros((bm.n_atoms - 1, 3)))
    x = np.zeros((bm.n_atoms, 3))
    x[4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        bm.map_positions(x)
    with pytest.raises(ValueError, match="length"):
        bm.map_positions(np.zeros((bm.n_atoms, 3)) * unit.picosecond)
    (tmp_path / "bad.json").write_text('{"format_version": 1, "atom_to')
    with pytest.raises(ValueError, match="not valid"):
        BeadMap.from_json(tmp_path / "bad.json")
    for error in (ValueError,):
        with pytest.raises(error):
            BeadMap.from_dict({"format_version": 1})

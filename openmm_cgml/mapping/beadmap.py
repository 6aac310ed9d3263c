"""METIS bead mapping of an all-atom OpenMM system.

Each molecule (connected component of the topology's bond graph) is cut into beads of about ``atoms_per_bead``
atoms by METIS (pymetis) on its bond graph. Hydrogens are first merged into the heavy atom they are bonded to, so
a bead boundary never separates an H from its atom and METIS balances heavy-atom groups (vertex weight = atom
count). Any part METIS returns that is not connected is split into its connected components, so a bead never
holds atoms that are not bonded together. Chosen residues (small ions, TFSI, ...) become one bead each.

Bead *types* are chemical identities: two beads share a type when their atom-level graphs are the same up to
atom order, where each atom is labelled by element, its number of bonds in the whole molecule and its nonbonded
force-field parameters. The label comparison uses a Weisfeiler-Lehman hash built with SHA-1, so type names are
stable across runs and machines (Python's ``hash`` is salted).
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter, deque
from typing import Optional, Sequence

import numpy as np
import openmm
import scipy.sparse
from openmm import app, unit

from ..pbc import minimum_image_triclinic
from ..units import strip_units

FORMAT_VERSION = 1
_WL_ITERATIONS = 4


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def box_matrix(box_vectors) -> Optional[np.ndarray]:
    """(3,3) box vectors in nm (rows a, b, c) from a Quantity, a (3,3) array or a (3,) orthorhombic box; or None."""
    if box_vectors is None:
        return None
    box = strip_units(box_vectors, unit.nanometer, "box_vectors")
    if box.shape == (3,):
        box = np.diag(box)
    if box.shape != (3, 3) or not np.all(np.isfinite(box)) or np.any(np.diag(box) <= 0):
        raise ValueError(f"box_vectors must be three positive box vectors in nm, got {box.tolist()}")
    return box


#: Kept for older imports; the one implementation is :func:`openmm_cgml.pbc.minimum_image_triclinic`.
minimum_image_np = minimum_image_triclinic


def _connected_components(nodes: Sequence[int], adjacency: list[list[int]]) -> list[list[int]]:
    """Connected components of the subgraph induced by ``nodes`` (sorted lists, in order of smallest node)."""
    allowed = set(nodes)
    seen: set[int] = set()
    components = []
    for start in sorted(allowed):
        if start in seen:
            continue
        seen.add(start)
        queue, component = deque([start]), []
        while queue:
            a = queue.popleft()
            component.append(a)
            for b in adjacency[a]:
                if b in allowed and b not in seen:
                    seen.add(b)
                    queue.append(b)
        components.append(sorted(component))
    return components


def _metis_parts(atoms: list[int], adjacency: list[list[int]], elements: list[str], n_parts: int,
                 seed: int) -> list[list[int]]:
    """Cut a connected set of atoms into ``n_parts`` connected groups with METIS (hydrogens kept on their atom)."""
    import pymetis

    local = {a: i for i, a in enumerate(atoms)}
    # Merge each hydrogen into its single bonded heavy atom: groups are the METIS vertices.
    group_of = {}
    for a in atoms:
        if elements[a] != "H":
            group_of[a] = a
    for a in atoms:
        if a not in group_of:
            heavy = [b for b in adjacency[a] if b in local and elements[b] != "H"]
            group_of[a] = heavy[0] if len(heavy) == 1 else a
    heads = sorted(set(group_of.values()))
    if n_parts >= len(heads):
        membership = {h: i for i, h in enumerate(heads)}
    else:
        index = {h: i for i, h in enumerate(heads)}
        neighbours = [set() for _ in heads]
        weights = [0] * len(heads)
        for a in atoms:
            g = index[group_of[a]]
            weights[g] += 1
            for b in adjacency[a]:
                if b in local and group_of[b] != group_of[a]:
                    neighbours[g].add(index[group_of[b]])
        xadj, adjncy = [0], []
        for nb in neighbours:
            adjncy.extend(sorted(nb))
            xadj.append(len(adjncy))
        options = pymetis.Options(seed=seed, ncuts=1, niter=10)
        _, parts = pymetis.part_graph(n_parts, adjacency=pymetis.CSRAdjacency(xadj, adjncy), vweights=weights,
                                      options=options)
        membership = {h: int(parts[i]) for i, h in enumerate(heads)}
    by_part: dict[int, list[int]] = {}
    for a in atoms:
        by_part.setdefault(membership[group_of[a]], []).append(a)
    groups = []
    for members in by_part.values():
        groups.extend(_connected_components(members, adjacency))  # METIS parts need not be connected
    return groups


def _nonbonded_labels(system: openmm.System) -> list[str]:
    """Per-particle nonbonded parameters (charge e, sigma nm, epsilon kJ/mol) as short strings, or '' if none."""
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            labels = []
            for i in range(force.getNumParticles()):
                q, sig, eps = force.getParticleParameters(i)
                labels.append(f"{q.value_in_unit(unit.elementary_charge):.4f}/{sig.value_in_unit(unit.nanometer):.4f}/"
                              f"{eps.value_in_unit(unit.kilojoule_per_mole):.4f}")
            return labels
    return [""] * system.getNumParticles()


def _wl_labels(labels: list[str], bonds: list[tuple[int, int]]) -> list[str]:
    """Weisfeiler-Lehman refined atom labels of a small graph (deterministic SHA-1 hashes)."""
    neighbours = [[] for _ in labels]
    for i, j in bonds:
        neighbours[i].append(j)
        neighbours[j].append(i)
    current = [_sha(label) for label in labels]
    for _ in range(_WL_ITERATIONS):
        current = [_sha(current[a] + "|" + ",".join(sorted(current[b] for b in neighbours[a])))
                   for a in range(len(labels))]
    return current


def _formula(elements: list[str]) -> str:
    """Hill formula (C, H, then alphabetical) of a list of element symbols."""
    counts = Counter(elements)
    order = [e for e in ("C", "H") if e in counts and "C" in counts] + sorted(
        e for e in counts if not ("C" in counts and e in ("C", "H")))
    return "".join(f"{e}{counts[e] if counts[e] > 1 else ''}" for e in order)


def _atom_graph(topology: app.Topology) -> tuple[list[tuple[int, int]], list[list[int]]]:
    """Sorted unique atom bonds (i < j) and the adjacency lists of the topology's bond graph."""
    atom_bonds = sorted({tuple(sorted((b[0].index, b[1].index))) for b in topology.bonds()})
    if not atom_bonds and any(len(list(r.atoms())) > 1 for r in topology.residues()):
        raise ValueError("topology has no bonds; load it from a PDB with CONECT records or create it with a "
                         "ForceField/Modeller that adds bonds")
    adjacency = [[] for _ in range(topology.getNumAtoms())]
    for i, j in atom_bonds:
        adjacency[i].append(j)
        adjacency[j].append(i)
    return atom_bonds, adjacency


def _bead_groups(molecules: list[list[int]], atoms: list, adjacency: list[list[int]], elements: list[str],
                 one_bead: set, atoms_per_bead: int, seed: int) -> list[list[int]]:
    """Atom groups of all beads, ordered by their first atom: one bead per residue named in ``one_bead``, the
    rest of each molecule cut by METIS into parts of about ``atoms_per_bead`` atoms."""
    groups: list[list[int]] = []
    for molecule in molecules:
        fixed: dict[int, list[int]] = {}
        free = []
        for a in molecule:
            residue = atoms[a].residue
            if residue.name in one_bead:
                fixed.setdefault(residue.index, []).append(a)
            else:
                free.append(a)
        for members in fixed.values():
            groups.extend(_connected_components(members, adjacency))
        for segment in _connected_components(free, adjacency):
            n_parts = max(1, int(round(len(segment) / atoms_per_bead)))
            groups.extend(_metis_parts(segment, adjacency, elements, n_parts, seed) if n_parts > 1 else [segment])
    groups.sort(key=lambda g: g[0])
    return groups


def _bead_identities(groups: list[list[int]], atom_bonds: list[tuple[int, int]], adjacency: list[list[int]],
                     elements: list[str], masses: np.ndarray, nonbonded: list[str]) -> tuple[list[str], list[dict]]:
    """Chemical identity of each bead: a WL hash of its atom graph with molecule-level atom labels (element,
    bond count in the molecule, nonbonded parameters), and the atom graph in canonical atom order."""
    degree = [len(n) for n in adjacency]
    signatures, graphs = [], []
    for g in groups:
        local = {a: i for i, a in enumerate(g)}
        labels = [f"{elements[a]}{degree[a]}:{nonbonded[a]}" for a in g]
        bonds = [(local[i], local[j]) for i, j in atom_bonds if i in local and j in local]
        wl = _wl_labels(labels, bonds)
        signatures.append(_sha(";".join(sorted(wl)) + "#" + ";".join(sorted(
            "-".join(sorted((wl[i], wl[j]))) for i, j in bonds))))
        order = sorted(range(len(g)), key=lambda i: (wl[i], i))  # canonical atom order (ties: symmetric atoms)
        rank = {old: new for new, old in enumerate(order)}
        graphs.append({
            "elements": [elements[g[i]] for i in order],
            "masses": [float(masses[g[i]]) for i in order],
            "atom_types": [labels[i] for i in order],
            "bonds": sorted([sorted((rank[i], rank[j])) + [0] for i, j in bonds]),
        })
    return signatures, graphs


def _molecule_species(molecules: list[list[int]], atoms: list) -> dict[int, str]:
    """Species of every atom: the most common residue name of its molecule."""
    species = {}
    for molecule in molecules:
        name = Counter(atoms[a].residue.name for a in molecule).most_common(1)[0][0]
        for a in molecule:
            species[a] = name
    return species


def _type_table(signatures: list[str], graphs: list[dict],
                bead_species: list[str]) -> tuple[list[int], list[str], list[dict]]:
    """Bead types numbered in order of first appearance: (bead_types, type_names, type_graphs)."""
    type_index: dict[str, int] = {}
    type_names, type_graphs, bead_types = [], [], []
    for sig, graph, species in zip(signatures, graphs, bead_species):
        if sig not in type_index:
            type_index[sig] = len(type_names)
            type_names.append(f"{species}:{_formula(graph['elements'])}-{sig[:6]}")
            type_graphs.append(graph)
        bead_types.append(type_index[sig])
    return bead_types, type_names, type_graphs


class BeadMap:
    """Assignment of the atoms of an OpenMM system to coarse-grained beads.

    Attributes (NumPy arrays unless stated): ``n_atoms``, ``n_beads``; ``atom_to_bead`` (n_atoms,);
    ``bead_atoms`` list of atom-index arrays; ``bead_masses`` (n_beads,) amu; ``bead_types`` (n_beads,) index into
    ``type_names`` (list of str); ``type_graphs`` (one dict per type: "elements", "masses" amu, "atom_types",
    "bonds" [[i, j, 0], ...] over local atom indices in canonical order); ``bonds`` (n_cg_bonds, 2) bead pairs
    joined by at least one atom bond, i < j, sorted; ``bead_molecule`` (n_beads,); ``bead_residue_names`` list of
    str; ``atom_masses`` (n_atoms,) amu; ``atom_bonds`` (n_bonds, 2); ``periodic`` bool.

    Build one with :meth:`from_openmm`; save and load it with :meth:`to_json` / :meth:`from_json`.
    """

    def __init__(self, atom_to_bead, atom_masses, atom_bonds, bead_types, type_names, type_graphs,
                 bead_residue_names, bead_species_names, periodic: bool):
        self.atom_to_bead = np.asarray(atom_to_bead, dtype=np.int64)
        self.atom_masses = np.asarray(atom_masses, dtype=np.float64)
        self.atom_bonds = np.asarray(atom_bonds, dtype=np.int64).reshape(-1, 2)
        self.bead_types = np.asarray(bead_types, dtype=np.int64)
        self.type_names = list(type_names)
        self.type_graphs = list(type_graphs)
        self.bead_residue_names = list(bead_residue_names)
        self._species = list(bead_species_names)
        self.periodic = bool(periodic)
        self.n_atoms = len(self.atom_to_bead)
        self.n_beads = len(self.bead_types)
        self.bead_atoms = [np.flatnonzero(self.atom_to_bead == b) for b in range(self.n_beads)]
        self.bead_masses = np.bincount(self.atom_to_bead, weights=self.atom_masses, minlength=self.n_beads)
        if np.any(self.bead_masses <= 0):
            raise ValueError(f"beads {np.flatnonzero(self.bead_masses <= 0).tolist()} have no mass; a bead needs "
                             "at least one particle with mass > 0")
        self._derive_graph()

    def _derive_graph(self):
        """Molecules, CG bonds and the atom walk used to make molecules whole under PBC."""
        adjacency = [[] for _ in range(self.n_atoms)]
        for i, j in self.atom_bonds:
            adjacency[i].append(j)
            adjacency[j].append(i)
        parent = np.full(self.n_atoms, -1, dtype=np.int64)
        depth = np.zeros(self.n_atoms, dtype=np.int64)
        molecule = np.full(self.n_atoms, -1, dtype=np.int64)
        n_molecules = 0
        for start in range(self.n_atoms):
            if molecule[start] >= 0:
                continue
            molecule[start] = n_molecules
            queue = deque([start])
            while queue:
                a = queue.popleft()
                for b in adjacency[a]:
                    if molecule[b] < 0:
                        molecule[b], parent[b], depth[b] = n_molecules, a, depth[a] + 1
                        queue.append(b)
            n_molecules += 1
        self._parent, self._levels = parent, [np.flatnonzero(depth == d) for d in range(1, depth.max(initial=0) + 1)]
        self.bead_molecule = np.array([molecule[atoms[0]] for atoms in self.bead_atoms], dtype=np.int64)
        pairs = np.sort(self.atom_to_bead[self.atom_bonds], axis=1) if len(self.atom_bonds) else np.zeros((0, 2), int)
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        self.bonds = np.unique(pairs, axis=0).astype(np.int64) if len(pairs) else np.zeros((0, 2), dtype=np.int64)
        weights = np.where(self.atom_masses > 0, self.atom_masses, 0.0)
        self._com_matrix = scipy.sparse.csr_matrix(
            (weights / self.bead_masses[self.atom_to_bead], (self.atom_to_bead, np.arange(self.n_atoms))),
            shape=(self.n_beads, self.n_atoms))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_openmm(cls, topology: app.Topology, system: openmm.System, atoms_per_bead: int = 7,
                    single_bead_residues: Sequence[str] = ("LI", "NA", "K", "CL"),
                    whole_residues: Sequence[str] = (), seed: int = 0) -> "BeadMap":
        """Map an OpenMM Topology + System to beads.

        Args:
            topology: all-atom topology with bonds (e.g. from a PDB with CONECT records or ``ForceField``).
            system: the matching System; particle masses (amu) weight the bead centres.
            atoms_per_bead: target atoms per bead (integer >= 1); a molecule of n atoms gets round(n / atoms_per_bead)
                beads (at least one).
            single_bead_residues, whole_residues: residue names mapped to exactly one bead per residue.
            seed: METIS seed (the mapping is deterministic for a given seed).
        """
        if isinstance(atoms_per_bead, bool) or not float(atoms_per_bead).is_integer() or atoms_per_bead < 1:
            raise ValueError(f"atoms_per_bead must be an integer >= 1, got {atoms_per_bead!r}")
        atoms_per_bead = int(atoms_per_bead)
        n_atoms = topology.getNumAtoms()
        if system.getNumParticles() != n_atoms:
            raise ValueError(f"the topology has {n_atoms} atoms but the system has {system.getNumParticles()} "
                             "particles; pass the System created from this Topology")
        atoms = list(topology.atoms())
        atom_bonds, adjacency = _atom_graph(topology)
        elements = [a.element.symbol if a.element is not None else "X" for a in atoms]
        masses = np.array([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n_atoms)])
        molecules = _connected_components(range(n_atoms), adjacency)  # computed once, used for beads and species
        groups = _bead_groups(molecules, atoms, adjacency, elements, set(single_bead_residues) | set(whole_residues),
                              atoms_per_bead, seed)
        atom_to_bead = np.empty(n_atoms, dtype=np.int64)
        for b, g in enumerate(groups):
            atom_to_bead[g] = b
        signatures, graphs = _bead_identities(groups, atom_bonds, adjacency, elements, masses,
                                              _nonbonded_labels(system))
        species_of_atom = _molecule_species(molecules, atoms)
        bead_species = [species_of_atom[g[0]] for g in groups]
        bead_types, type_names, type_graphs = _type_table(signatures, graphs, bead_species)
        return cls(
            atom_to_bead=atom_to_bead, atom_masses=masses, atom_bonds=np.array(atom_bonds, dtype=np.int64),
            bead_types=bead_types, type_names=type_names, type_graphs=type_graphs,
            bead_residue_names=[atoms[g[0]].residue.name for g in groups],
            bead_species_names=bead_species,
            periodic=system.usesPeriodicBoundaryConditions(),
        )

    # ------------------------------------------------------------------ mapping
    def bead_species(self) -> list[str]:
        """Readable species label per bead: the main residue name of its molecule (e.g. "LI", "TFS", "PEO")."""
        return list(self._species)

    def bead_molecule_sizes(self) -> np.ndarray:
        """(n_beads,) int: the number of beads in each bead's molecule."""
        return np.bincount(self.bead_molecule)[self.bead_molecule]

    def _make_whole(self, x: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Rebuild each molecule atom by atom along its bond tree with minimum-image bond vectors."""
        x = x.copy()
        for level in self._levels:
            parent = self._parent[level]
            x[..., level, :] = x[..., parent, :] + minimum_image_triclinic(x[..., level, :] - x[..., parent, :], box)
        return x

    def _centres(self, x: np.ndarray) -> np.ndarray:
        """Mass-weighted bead centres of (..., n_atoms, 3) positions."""
        lead = x.shape[:-2]
        flat = np.moveaxis(x, -2, 0).reshape(self.n_atoms, -1)  # (n_atoms, T*3)
        centres = (self._com_matrix @ flat).reshape((self.n_beads,) + lead + (3,))
        return np.moveaxis(centres, 0, -2)

    def _check_positions(self, x: np.ndarray, what: str):
        if x.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"{what} has {x.shape[-2] if x.ndim >= 2 else x.size} atoms x {x.shape[-1:]} but the "
                             f"bead map expects ({self.n_atoms}, 3); use the topology the map was built from")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"{what} contain NaN or infinite values")

    def map_positions(self, positions, box_vectors=None) -> np.ndarray:
        """Bead centres (n_beads, 3) float64 nm of all-atom ``positions`` (Quantity or (n_atoms,3) array in nm).

        With ``box_vectors`` (Quantity, (3,3) or (3,) nm) each molecule is first made whole by minimum image."""
        x = strip_units(positions, unit.nanometer, "positions")
        self._check_positions(x, "positions")
        box = box_matrix(box_vectors)
        if box is not None:
            x = self._make_whole(x, box)
        return self._centres(x)

    def map_trajectory(self, traj) -> np.ndarray:
        """Bead centres (T, n_beads, 3) float32 nm of an mdtraj Trajectory.

        With unit cells, molecules are made whole frame by frame; unwrapped input gives continuous bead paths,
        wrapped input gives whole molecules whose centres may jump by a box vector between frames
        (:func:`openmm_cgml.reference.unwrap_bead_trajectory` removes those jumps)."""
        x = np.asarray(traj.xyz, dtype=np.float64)
        self._check_positions(x, "trajectory")
        if traj.unitcell_vectors is not None:
            x = self._make_whole(x, np.asarray(traj.unitcell_vectors, dtype=np.float64))
        return self._centres(x).astype(np.float32)

    # ------------------------------------------------------------------ topologies
    def to_topology(self, box_vectors=None) -> app.Topology:
        """OpenMM Topology with one atom per bead (no element), one residue per bead and one chain per molecule.

        Residue names are the first three letters of the species, atom names ``B<type>``; CG bonds are added."""
        top = app.Topology()
        chain, current = None, -1
        beads = []
        for b in range(self.n_beads):
            if self.bead_molecule[b] != current:
                chain, current = top.addChain(), self.bead_molecule[b]
            residue = top.addResidue(self._species[b][:3], chain)
            beads.append(top.addAtom(f"B{self.bead_types[b]}", None, residue))
        for i, j in self.bonds:
            top.addBond(beads[i], beads[j])
        box = box_matrix(box_vectors)
        if box is not None:
            top.setPeriodicBoxVectors([openmm.Vec3(*row) for row in box] * unit.nanometer)
        return top

    def to_mdtraj_topology(self):
        """The :meth:`to_topology` topology as an ``mdtraj.Topology``."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.to_topology())

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "atom_to_bead": self.atom_to_bead.tolist(),
            "atom_masses": self.atom_masses.tolist(),
            "atom_bonds": self.atom_bonds.tolist(),
            "bead_types": self.bead_types.tolist(),
            "type_names": list(self.type_names),
            "type_graphs": self.type_graphs,
            "bead_residue_names": list(self.bead_residue_names),
            "bead_species": list(self._species),
            "periodic": self.periodic,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BeadMap":
        if not isinstance(d, dict) or d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a bead map of format version {FORMAT_VERSION} (got "
                             f"{d.get('format_version') if isinstance(d, dict) else type(d).__name__})")
        try:
            return cls(d["atom_to_bead"], d["atom_masses"], d["atom_bonds"], d["bead_types"], d["type_names"],
                       d["type_graphs"], d["bead_residue_names"], d["bead_species"], d["periodic"])
        except KeyError as missing:
            raise ValueError(f"bead map is missing the field {missing}") from None

    def to_json(self, path: str):
        """Write the map as JSON (written to a temporary file first, so a failure leaves nothing half-written)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def from_json(cls, path: str) -> "BeadMap":
        try:
            with open(path) as f:
                return cls.from_dict(json.load(f))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid bead-map JSON ({err.msg} at line {err.lineno})") from None

    def __repr__(self):
        return (f"BeadMap({self.n_atoms} atoms -> {self.n_beads} beads of {len(self.type_names)} types, "
                f"{len(self.bonds)} CG bonds, periodic={self.periodic})")

"""Tests of openmm_cgml.systems: CL&P force-field parameters, builders, mixing rules and BuiltSystem I/O."""
import math
import os

import numpy as np
import openmm as mm
import pytest
from openmm import app, unit

from openmm_cgml.systems import (BuiltSystem, build_bead_spring, build_peo_litfsi, peo_litfsi_system,
                                 peo_litfsi_topology)
from openmm_cgml.systems.peo_litfsi import peo_chain_coordinates, tfsi_coordinates

# Lines copied from CL&P il.ff (version 2025/12/19; kJ/mol, Angstrom, degrees, k/2 (x - x0)^2 convention):
#   ATOMS  CSO CT 12.011 0.14 lj 3.50 0.27614 | C3O CT 12.011 0.11 lj 3.50 0.27614 | HY HC 1.008 0.03 lj 2.50 0.12552
#          OY OY 15.999 -0.40 lj 2.90 0.58576 | Li Li 6.941 +1.00 lj 2.126 0.07648
#          CBT CF 12.011 0.35 lj 3.50 0.27614 | SBT SB 32.066 1.02 lj 3.55 1.04600 | NBT NB 14.000 -0.66 lj 3.25 0.71128
#          OBT OB 15.999 -0.53 lj 3.15 0.83736 | F1 FB 18.998 -0.16 lj 3.118 0.25540
#   BONDS  CT OY harm 1.410 2677.8 ;  ANGLES CT OY CT harm 109.5 502.1
#   DIHEDRALS  OY CT CT OY opls -2.3012 0 0 0 ;  CT CT OY CT opls 2.7196 -1.0460 2.8033 0.0000
#              SB NB SB CF opls 32.7730 -10.4200 -3.1950 0.0000
IL_FF_ATOMS = {  # element-and-environment key -> (charge e, sigma A, epsilon kJ/mol)
    "C3O": (0.11, 3.50, 0.27614), "CSO": (0.14, 3.50, 0.27614), "HY": (0.03, 2.50, 0.12552),
    "OY": (-0.40, 2.90, 0.58576), "Li": (1.00, 2.126, 0.07648), "CBT": (0.35, 3.50, 0.27614),
    "SBT": (1.02, 3.55, 1.04600), "NBT": (-0.66, 3.25, 0.71128), "OBT": (-0.53, 3.15, 0.83736),
    "F1": (-0.16, 3.118, 0.25540),
}
ONE_4PI_EPS0 = 138.935457  # kJ mol^-1 nm e^-2


def il_ff_type(atom):
    """CL&P type of an atom of our PEO/LiTFSI topology, derived from its element and bonded neighbours."""
    symbol = atom.element.symbol
    if atom.residue.name == "TFS":
        return {"C": "CBT", "S": "SBT", "N": "NBT", "O": "OBT", "F": "F1"}[symbol]
    if symbol == "Li":
        return "Li"
    if symbol == "C":
        n_h = sum(1 for b in atom.residue.chain.topology.bonds() if atom in b and "H" in (b[0].element.symbol, b[1].element.symbol))
        return "C3O" if n_h == 3 else "CSO"
    return {"H": "HY", "O": "OY"}[symbol]


def graph_distances(topology):
    """Bond-graph distances (up to 3) between atoms, by breadth-first search."""
    neighbours = {a.index: set() for a in topology.atoms()}
    for a, b in topology.bonds():
        neighbours[a.index].add(b.index)
        neighbours[b.index].add(a.index)
    dist = {}
    for start in neighbours:
        frontier, seen = {start}, {start: 0}
        for d in (1, 2, 3):
            frontier = {n for f in frontier for n in neighbours[f] if n not in seen}
            for n in frontier:
                seen[n] = d
        dist[start] = seen
    return dist


def tiny_nonperiodic(mixing, charge_scale=0.8):
    """One CH3O(CH2CH2O)2CH3 + one TFSI + one Li at fixed, separated positions, no box, no constraints."""
    topology = peo_litfsi_topology(1, 2, 1)
    chain = peo_chain_coordinates(2)[1]
    tfsi = tfsi_coordinates()[1] + np.array([0.1, 0.9, 0.2])
    li = np.array([[0.4, -0.45, 0.1]])
    xyz = np.vstack([chain, tfsi, li])
    system = peo_litfsi_system(topology, charge_scale=charge_scale, mixing=mixing, constraints=None)
    return topology, system, xyz


def group_energy(system, xyz, forces):
    for f in system.getForces():
        f.setForceGroup(1 if isinstance(f, forces) else 0)
    ctx = mm.Context(system, mm.VerletIntegrator(0.001), mm.Platform.getPlatformByName("Reference"))
    ctx.setPositions(xyz * unit.nanometer)
    return ctx.getState(getEnergy=True, groups={1}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


@pytest.fixture(scope="module")
def tiny_build():
    return build_peo_litfsi(n_chains=2, eo_per_chain=3, n_salt=1, equilibration_ps=3.0, platform="CPU",
                            progress=False, seed=1)


# ---------------------------------------------------------------------------------------------- force field
def test_parameters_equal_il_ff_table():
    topology, system, xyz = tiny_nonperiodic("lorentz-berthelot")
    atoms = list(topology.atoms())
    nb = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    for atom in atoms:
        q, sigma, eps = nb.getParticleParameters(atom.index)
        kind = il_ff_type(atom)
        q0, s0, e0 = IL_FF_ATOMS[kind]
        scale = 0.8 if atom.residue.name in ("LI", "TFS") else 1.0
        assert q.value_in_unit(unit.elementary_charge) == pytest.approx(q0 * scale, abs=1e-12), kind
        assert sigma.value_in_unit(unit.nanometer) == pytest.approx(s0 / 10, rel=1e-12), kind
        assert eps.value_in_unit(unit.kilojoule_per_mole) == pytest.approx(e0, rel=1e-12), kind
    li = next(a for a in atoms if a.element.symbol == "Li")
    assert system.getParticleMass(li.index).value_in_unit(unit.dalton) == pytest.approx(6.941)
    # Neutral with scaled ions; each TFSI carries -0.8 e.
    charges = [nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in range(len(atoms))]
    assert abs(sum(charges)) < 1e-10
    assert sum(c for a, c in zip(atoms, charges) if a.residue.name == "TFS") == pytest.approx(-0.8)

    # CT-OY bond: 1.410 A, 2677.8 kJ/mol/A^2 -> 0.141 nm, 267780 kJ/mol/nm^2.
    bonds = next(f for f in system.getForces() if isinstance(f, mm.HarmonicBondForce))
    found = 0
    for k in range(bonds.getNumBonds()):
        i, j, r0, kb = bonds.getBondParameters(k)
        if {atoms[i].element.symbol, atoms[j].element.symbol} == {"C", "O"} and atoms[i].residue.name != "TFS":
            assert r0.value_in_unit(unit.nanometer) == pytest.approx(0.1410)
            assert kb.value_in_unit(unit.kilojoule_per_mole / unit.nanometer**2) == pytest.approx(267780.0)
            found += 1
    assert found == 6  # CH3O(CH2CH2O)2CH3 has six C-O bonds
    # C-O-C angle: 109.5 deg, 502.1 kJ/mol/rad^2.
    angles = next(f for f in system.getForces() if isinstance(f, mm.HarmonicAngleForce))
    coc = [angles.getAngleParameters(k) for k in range(angles.getNumAngles())
           if [atoms[x].element.symbol for x in angles.getAngleParameters(k)[:3]] == ["C", "O", "C"]]
    assert len(coc) == 3
    for *_, theta, ka in coc:
        assert theta.value_in_unit(unit.degree) == pytest.approx(109.5)
        assert ka.value_in_unit(unit.kilojoule_per_mole / unit.radian**2) == pytest.approx(502.1)


def opls(phi, v):
    return (v[0] / 2 * (1 + np.cos(phi)) + v[1] / 2 * (1 - np.cos(2 * phi)) + v[2] / 2 * (1 + np.cos(3 * phi))
            + v[3] / 2 * (1 - np.cos(4 * phi)))


@pytest.mark.parametrize("pattern,v", [(("O", "C", "C", "O"), (-2.3012, 0, 0, 0)),
                                       (("C", "C", "O", "C"), (2.7196, -1.0460, 2.8033, 0.0)),
                                       (("S", "N", "S", "C"), (32.7730, -10.4200, -3.1950, 0.0))])
def test_torsions_reproduce_opls_fourier_series(pattern, v):
    topology, system, xyz = tiny_nonperiodic("lorentz-berthelot")
    symbols = [a.element.symbol for a in topology.atoms()]
    torsions = next(f for f in system.getForces() if isinstance(f, mm.PeriodicTorsionForce))
    terms = {}
    for k in range(torsions.getNumTorsions()):
        i, j, l, m, n, phase, kt = torsions.getTorsionParameters(k)
        key = (i, j, l, m)
        if tuple(symbols[x] for x in key) in (pattern, pattern[::-1]):
            terms.setdefault(key, []).append((n, phase.value_in_unit(unit.radian), kt.value_in_unit(unit.kilojoule_per_mole)))
    assert terms, pattern
    phi = np.linspace(-np.pi, np.pi, 37)
    for key, series in terms.items():
        energy = sum(kt * (1 + np.cos(n * phi - phase)) for n, phase, kt in series)
        np.testing.assert_allclose(energy, opls(phi, v), atol=1e-9)


def test_one_four_scaling_is_half():
    topology, system, xyz = tiny_nonperiodic("lorentz-berthelot")
    nb = next(f for f in system.getForces() if isinstance(f, mm.NonbondedForce))
    dist = graph_distances(topology)
    n14 = 0
    for k in range(nb.getNumExceptions()):
        i, j, qq, sigma, eps = nb.getExceptionParameters(k)
        qi, si, ei = nb.getParticleParameters(i)
        qj, sj, ej = nb.getParticleParameters(j)
        if dist[i][j] < 3:
            assert qq.value_in_unit(unit.elementary_charge**2) == 0 and eps.value_in_unit(unit.kilojoule_per_mole) == 0
        else:
            n14 += 1
            assert qq / (qi * qj) == pytest.approx(0.5)
            assert eps.value_in_unit(unit.kilojoule_per_mole) == pytest.approx(
                0.5 * math.sqrt(ei.value_in_unit(unit.kilojoule_per_mole) * ej.value_in_unit(unit.kilojoule_per_mole)))
    assert n14 > 0


@pytest.mark.parametrize("mixing", ["lorentz-berthelot", "geometric"])
def test_nonbonded_energy_matches_numpy_pair_sum(mixing):
    topology, system, xyz = tiny_nonperiodic(mixing)
    openmm_energy = group_energy(system, xyz, (mm.NonbondedForce, mm.CustomNonbondedForce))
    atoms = list(topology.atoms())
    params = []
    for atom in atoms:
        q, s, e = IL_FF_ATOMS[il_ff_type(atom)]
        params.append((q * (0.8 if atom.residue.name in ("LI", "TFS") else 1.0), s / 10, e))
    dist = graph_distances(topology)
    energy = 0.0
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            d = dist[i].get(j, 99)
            if d < 3:
                continue
            scale = 0.5 if d == 3 else 1.0
            (qi, si, ei), (qj, sj, ej) = params[i], params[j]
            r = np.linalg.norm(xyz[i] - xyz[j])
            sigma = math.sqrt(si * sj) if mixing == "geometric" else 0.5 * (si + sj)
            lj = 4 * math.sqrt(ei * ej) * ((sigma / r) ** 12 - (sigma / r) ** 6)
            energy += scale * (ONE_4PI_EPS0 * qi * qj / r + lj)
    assert openmm_energy == pytest.approx(energy, rel=1e-6)


def test_mixing_rules_differ_only_in_lennard_jones():
    _, lb, xyz = tiny_nonperiodic("lorentz-berthelot")
    _, geo, _ = tiny_nonperiodic("geometric")
    assert any(isinstance(f, mm.CustomNonbondedForce) for f in geo.getForces())
    e_lb = group_energy(lb, xyz, (mm.NonbondedForce, mm.CustomNonbondedForce))
    e_geo = group_energy(geo, xyz, (mm.NonbondedForce, mm.CustomNonbondedForce))
    assert e_lb != pytest.approx(e_geo, rel=1e-9)
    assert e_lb == pytest.approx(e_geo, rel=0.05)


def test_bad_arguments_raise():
    topology = peo_litfsi_topology(1, 1, 0)
    with pytest.raises(ValueError, match="mixing"):
        peo_litfsi_system(topology, mixing="arithmetic")
    with pytest.raises(ValueError, match="charge_scale"):
        peo_litfsi_system(topology, charge_scale=1.5)
    with pytest.raises(TypeError, match="kelvin"):
        build_peo_litfsi(1, 1, 0, temperature=400.0, progress=False)
    with pytest.raises(ValueError, match="eo_per_chain"):
        build_peo_litfsi(1, 0, 0, progress=False)


# ---------------------------------------------------------------------------------------------- builders
def test_tiny_peo_litfsi_build(tiny_build):
    built = tiny_build
    n_atoms = 2 * (5 + 7 * 3 + 4) + 15 + 1
    assert built.topology.getNumAtoms() == built.system.getNumParticles() == n_atoms
    assert [r.name for r in built.topology.residues()][:5] == ["PEH", "PEO", "PEO", "PEO", "PET"]
    assert built.topology.getNumBonds() == 2 * 29 + 14
    nb = next(f for f in built.system.getForces() if isinstance(f, mm.NonbondedForce))
    assert nb.getNonbondedMethod() == mm.NonbondedForce.PME
    assert abs(sum(nb.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge)
                   for i in range(n_atoms))) < 1e-10
    n_h = sum(1 for a in built.topology.atoms() if a.element.symbol == "H")
    assert built.system.getNumConstraints() == n_h  # HBonds
    box = built.box_vectors.value_in_unit(unit.nanometer)
    assert nb.getCutoffDistance().value_in_unit(unit.nanometer) <= 0.5 * box[0, 0]
    assert not any(isinstance(f, mm.MonteCarloBarostat) for f in built.system.getForces())
    energy = built.potential_energy("CPU").value_in_unit(unit.kilojoule_per_mole)
    assert math.isfinite(energy)
    assert built.metadata["density_g_cm3"] == pytest.approx(built.density().value_in_unit(unit.gram / unit.centimeter**3))
    assert 0.3 < built.metadata["density_g_cm3"] < 1.5  # compressed from the loose 0.15 g/cm^3 packing (3 ps only)
    # 2 fs Langevin steps run from the built state.
    integrator = mm.LangevinMiddleIntegrator(400 * unit.kelvin, 1 / unit.picosecond, 0.002 * unit.picosecond)
    ctx = built.context(integrator, "CPU")
    integrator.step(20)
    assert math.isfinite(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


@pytest.mark.parametrize("bond", ["harmonic", "fene"])
def test_bead_spring_chain(bond):
    built = build_bead_spring("chain", n_chains=2, chain_length=12, bond=bond, sequence="block", seed=3)
    assert built.box_vectors is None and not built.system.usesPeriodicBoundaryConditions()
    assert built.system.getNumParticles() == built.topology.getNumAtoms() == 24
    assert built.topology.getNumBonds() == 22
    assert [a.name for a in built.topology.atoms()][:12] == ["A0", "A1", "A2", "A3", "B4", "B5", "B6", "B7",
                                                             "C8", "C9", "CA", "CB"]
    assert built.metadata["sequences"] == ["AAAABBBBCCCC"] * 2
    pair = next(f for f in built.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    eps = built.metadata["args"]["epsilon_kj_mol"]
    assert pair.getParticleParameters(0)[0] == pytest.approx(eps) and pair.getParticleParameters(11)[0] == pytest.approx(0.25 * eps)
    assert pair.getNumExclusions() == (22 if bond == "harmonic" else 0)
    tau = built.metadata["tau_ps"]
    integrator = mm.LangevinMiddleIntegrator(built.temperature, 1 / (tau * unit.picosecond), 0.01 * tau * unit.picosecond)
    ctx = built.context(integrator, "Reference")
    e0 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    integrator.step(50)
    e1 = ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert math.isfinite(e0) and math.isfinite(e1)


def test_kremer_grest_melt():
    built = build_bead_spring("kremer-grest", n_chains=6, chain_length=10, seed=2)
    sigma = built.metadata["args"]["sigma_nm"]
    box = built.box_vectors.value_in_unit(unit.nanometer)
    assert 60 / np.linalg.det(box) * sigma**3 == pytest.approx(0.85)
    assert built.topology.getNumBonds() == 54 and built.topology.getNumChains() == 6
    fene = next(f for f in built.system.getForces() if isinstance(f, mm.CustomBondForce))
    eps = built.metadata["args"]["epsilon_kj_mol"]
    params = {fene.getGlobalParameterName(k): fene.getGlobalParameterDefaultValue(k)
              for k in range(fene.getNumGlobalParameters())}
    assert params["k_fene"] == pytest.approx(30 * eps / sigma**2) and params["r0_fene"] == pytest.approx(1.5 * sigma)
    wca = next(f for f in built.system.getForces() if isinstance(f, mm.CustomNonbondedForce))
    assert wca.getCutoffDistance().value_in_unit(unit.nanometer) == pytest.approx(2 ** (1 / 6) * sigma)
    # Bonds within FENE range, energy finite, Langevin steps run.
    xyz = built.positions.value_in_unit(unit.nanometer)
    for a, b in built.topology.bonds():
        d = xyz[a.index] - xyz[b.index]
        d -= box[0, 0] * np.round(d / box[0, 0])
        assert np.linalg.norm(d) < 1.5 * sigma
    tau = built.metadata["tau_ps"]
    integrator = mm.LangevinMiddleIntegrator(built.temperature, 1 / (tau * unit.picosecond), 0.005 * tau * unit.picosecond)
    ctx = built.context(integrator, "Reference")
    integrator.step(50)
    assert math.isfinite(ctx.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))


# ---------------------------------------------------------------------------------------------- BuiltSystem
def test_save_load_round_trip(tiny_build, tmp_path):
    target = tmp_path / "box"
    tiny_build.save(target)
    assert sorted(os.listdir(target)) == ["metadata.json", "state.xml", "system.xml", "topology.pdb"]
    loaded = BuiltSystem.load(target)
    assert np.array_equal(loaded.positions.value_in_unit(unit.nanometer), tiny_build.positions.value_in_unit(unit.nanometer))
    assert np.array_equal(loaded.box_vectors.value_in_unit(unit.nanometer), tiny_build.box_vectors.value_in_unit(unit.nanometer))
    assert loaded.topology.getNumBonds() == tiny_build.topology.getNumBonds()
    assert [r.name for r in loaded.topology.residues()] == [r.name for r in tiny_build.topology.residues()]
    assert loaded.metadata["density_g_cm3"] == tiny_build.metadata["density_g_cm3"]
    assert loaded.temperature == tiny_build.temperature
    assert loaded.potential_energy() == tiny_build.potential_energy()


def test_save_refuses_non_empty_directory(tmp_path):
    built = build_bead_spring("chain", chain_length=40, minimize=False)
    (tmp_path / "note.txt").write_text("keep")
    with pytest.raises(ValueError, match="not empty"):
        built.save(tmp_path)
    assert os.listdir(tmp_path) == ["note.txt"]
    built.save(tmp_path, overwrite=True)
    loaded = BuiltSystem.load(tmp_path)
    assert np.array_equal(loaded.positions._value, built.positions._value)
    assert [a.element for a in loaded.topology.atoms()] == [None] * 40 and loaded.box_vectors is None
    assert [a.name for a in loaded.topology.atoms()] == [a.name for a in built.topology.atoms()]
    assert loaded.topology.getNumBonds() == 39


def test_from_openmm_validates_input():
    topology = peo_litfsi_topology(1, 1, 0)
    system = peo_litfsi_system(topology, constraints=None)
    xyz = peo_chain_coordinates(1)[1]
    built = BuiltSystem.from_openmm(topology, system, xyz * unit.nanometer, temperature=350 * unit.kelvin)
    assert built.metadata["builder"] == "from_openmm" and built.box_vectors is None
    assert math.isfinite(built.potential_energy().value_in_unit(unit.kilojoule_per_mole))
    with pytest.raises(ValueError, match="same count"):
        BuiltSystem.from_openmm(topology, system, xyz[:-1] * unit.nanometer)
    bad = xyz.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        BuiltSystem.from_openmm(topology, system, bad * unit.nanometer)
    with pytest.raises(TypeError, match="Quantity"):
        BuiltSystem.from_openmm(topology, system, xyz)
    with pytest.raises(TypeError, match="kelvin"):
        BuiltSystem.from_openmm(topology, system, xyz * unit.nanometer, temperature=300)


def test_cli_build_bead_spring_forwards_options(tmp_path, capsys):
    import json

    from openmm_cgml.cli import main

    argv = ["build", "bead-spring", "--model", "chain", "--chains", "2", "--chain-length", "12", "--sequence", "block",
            "--temperature", "350", "-o", str(tmp_path / "bs")]
    assert main(argv) == 0
    meta = json.loads((tmp_path / "bs" / "metadata.json").read_text())
    assert meta["args"]["n_chains"] == 2 and meta["args"]["chain_length"] == 12 and meta["temperature_K"] == 350.0
    assert meta["sequences"] == ["AAAABBBBCCCC"] * 2
    capsys.readouterr()
    assert main(argv) == 2  # the directory now holds files: one line, nothing overwritten
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cgml build: error" in err[0]


def test_overwrite_replaces_the_whole_directory(tmp_path):
    """`build --overwrite` must not leave the old system's reference run behind to be continued (#9.3)."""
    target = tmp_path / "box"
    first = build_bead_spring("chain", chain_length=12, minimize=False, seed=1)
    first.save(target)
    (target / "reference").mkdir()
    (target / "reference" / "cg.h5").write_bytes(b"frames of the old system")
    second = build_bead_spring("chain", chain_length=16, minimize=False, seed=2)
    second.save(target, overwrite=True)
    assert sorted(os.listdir(target)) == ["metadata.json", "state.xml", "system.xml", "topology.pdb"]
    assert BuiltSystem.load(target).n_atoms == 16
    assert first.fingerprint() != second.fingerprint() == BuiltSystem.load(target).fingerprint()
    assert [n for n in os.listdir(tmp_path) if n != "box"] == []  # no staging directory left
    # A directory with subdirectories that is not a saved system is not wiped by overwrite=True.
    other = tmp_path / "data"
    (other / "keep").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        second.save(other, overwrite=True)
    assert os.listdir(other) == ["keep"]


def test_load_refuses_python_force_before_deserializing(tmp_path):
    """A PythonForce's function is a pickle: OpenMM would run it while deserializing system.xml (#9.1)."""
    import pickle

    import openmm as mm

    class RunsCode:
        def __reduce__(self):
            return exec, (f"open({str(tmp_path / 'MARKER')!r}, 'w').write('ran')",)

    built = build_bead_spring("chain", chain_length=12, minimize=False)
    target = built.save(tmp_path / "box")
    system = mm.XmlSerializer.deserialize(open(os.path.join(target, "system.xml")).read())
    system.addForce(mm.PythonForce(_python_force_callback))
    text = mm.XmlSerializer.serialize(system).replace(pickle.dumps(_python_force_callback).hex(),
                                                      pickle.dumps(RunsCode()).hex())
    open(os.path.join(target, "system.xml"), "w").write(text)
    with pytest.raises(ValueError, match="PythonForce.*refusing to load"):
        BuiltSystem.load(target)
    assert not (tmp_path / "MARKER").exists()
    mm.XmlSerializer.deserialize(text)  # control: OpenMM itself runs the payload
    assert (tmp_path / "MARKER").read_text() == "ran"


def _python_force_callback(state):
    return 0.0, np.zeros((12, 3))


def test_fingerprint_survives_save_and_load(tiny_peo_litfsi, tmp_path):
    """A reference run started on a freshly built box resumes on the saved one: the PDB round trip reorders the
    bonds (it did for PEO/LiTFSI), which must not change the fingerprint; a moved atom must."""
    tiny_peo_litfsi.save(tmp_path / "box")
    loaded = BuiltSystem.load(tmp_path / "box")
    order = lambda built: [(a.index, b.index) for a, b in built.topology.bonds()]
    assert sorted(map(sorted, order(loaded))) == sorted(map(sorted, order(tiny_peo_litfsi)))
    assert loaded.fingerprint() == tiny_peo_litfsi.fingerprint()
    loaded.positions[0] += 1e-6 * unit.nanometer
    assert loaded.fingerprint() != tiny_peo_litfsi.fingerprint()

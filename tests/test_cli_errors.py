"""Every row of the README's "Bad input and what you get" table, driven through the CLI.

Each row asserts: exit code != 0, exactly one line on stderr naming the verb and what is wrong, no traceback, and
that nothing half-written is left behind. Rows run ``cli.main`` in-process (fast); a few also run as real
subprocesses, which catches output that C libraries (mdtraj's DCD plugin) print outside Python.
"""
import json
import os
import pickle
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from openmm import app, unit

from openmm_cgml.cli import main
from openmm_cgml.data import write_dataset
from openmm_cgml.mapping import BeadMap
from openmm_cgml.systems import build_bead_spring

PRETRAINED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "openmm_cgml", "pretrained",
                          "peo_litfsi_default")


class _RunsCode:
    """Unpickling this object runs ``exec(code)``: what a crafted PythonForce payload does."""

    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def crafted_system_xml(marker: str) -> str:
    """A System XML made by OpenMM itself with a PythonForce whose pickled function writes ``marker``."""
    import openmm as mm

    system = mm.System()
    system.addParticle(1.0)
    force = mm.PythonForce(_module_level_callback)
    system.addForce(force)
    text = mm.XmlSerializer.serialize(system)
    good = pickle.dumps(_module_level_callback).hex()
    evil = pickle.dumps(_RunsCode(f"open({marker!r}, 'w').write('code ran')"), protocol=4).hex()
    assert good in text
    return text.replace(good, evil)


def _module_level_callback(state):
    return 0.0, np.zeros((1, 3))


def _permuted_beadmap(beadmap, perm):
    d = beadmap.to_dict()
    inv = np.argsort(perm)
    d["atom_to_bead"] = inv[np.asarray(d["atom_to_bead"])].tolist()
    for key in ("bead_types", "bead_residue_names", "bead_species"):
        d[key] = [d[key][i] for i in perm]
    return BeadMap.from_dict(d)


@pytest.fixture(scope="module")
def ws(tiny_peo_litfsi, tmp_path_factory):
    """A workspace of tiny good and bad inputs (paths by name)."""
    from mdtraj.formats import DCDTrajectoryFile

    root = tmp_path_factory.mktemp("bad_input")
    p = {"root": str(root)}
    p["file"] = str(root / "a_file.txt")
    open(p["file"], "w").write("not a directory\n")
    peo = tiny_peo_litfsi
    p["peo"] = peo.save(str(root / "peo"))
    p["bs"] = build_bead_spring("chain", chain_length=12, minimize=False).save(str(root / "bs"))
    # A system directory whose system.xml runs code when deserialized.
    p["marker"] = str(root / "MARKER")
    p["evil"] = str(root / "evil")
    shutil.copytree(p["bs"], p["evil"])
    with open(os.path.join(p["evil"], "system.xml"), "w") as handle:
        handle.write(crafted_system_xml(p["marker"]))

    bm = BeadMap.from_openmm(peo.topology, peo.system, atoms_per_bead=7)
    start = bm.map_positions(peo.positions, peo.box_vectors)
    rng = np.random.default_rng(0)
    n = 24
    pos = (start[None] + np.cumsum(rng.normal(scale=0.02, size=(n, bm.n_beads, 3)), axis=0)).astype(np.float32)
    box = np.tile(np.diag(peo.box_vectors.value_in_unit(unit.nanometer)), (n, 1)).astype(np.float32)
    p["good_h5"] = write_dataset(str(root / "good.h5"), bm, pos, box, np.arange(n) * 2.0, {"note": "synthetic"})

    p["init_from_yaml"] = str(root / "init_from.yaml")  # fine-tuning a model trained on other bead types
    with open(p["init_from_yaml"], "w") as handle:
        handle.write("init_from: peo-litfsi-molecule\ncutoff: 0.3\n")

    def variant(name, edit):
        path = str(root / name)
        shutil.copy(p["good_h5"], path)
        with h5py.File(path, "r+") as f:
            edit(f)
        return path

    p["no_time"] = variant("no_time.h5", lambda f: f.__delitem__("time"))
    p["short_time"] = variant("short_time.h5", lambda f: f["time"].resize(n - 3, axis=0))
    p["short_box"] = variant("short_box.h5", lambda f: f["box"].resize(n - 3, axis=0))
    other = BeadMap.from_openmm(peo.topology, peo.system, atoms_per_bead=3)

    def wrong_beadmap(f):
        del f["beadmap"]
        f["beadmap"] = np.array(json.dumps(other.to_dict()), dtype=h5py.string_dtype("utf-8"))

    p["wrong_beadmap"] = variant("wrong_beadmap.h5", wrong_beadmap)

    # A CG DCD + its topology (as the demo writes them) + bead maps: right, reversed, species swapped.
    p["cg_pdb"] = str(root / "cg.pdb")
    with open(p["cg_pdb"], "w") as handle:
        app.PDBFile.writeFile(bm.to_topology(peo.box_vectors), start * unit.nanometer, handle)
    p["cg_dcd"] = str(root / "cg.dcd")
    with DCDTrajectoryFile(p["cg_dcd"], "w") as f:
        f.write(pos * 10, cell_lengths=box * 10, cell_angles=np.full((n, 3), 90.0))
    raw = open(p["cg_dcd"], "rb").read()
    p["half_dcd"] = str(root / "half.dcd")
    open(p["half_dcd"], "wb").write(raw[: len(raw) // 2])
    p["garbage_dcd"] = str(root / "garbage.dcd")
    open(p["garbage_dcd"], "wb").write(b"this is no trajectory " * 50)
    p["beadmap"] = str(root / "beadmap.json")
    bm.to_json(p["beadmap"])
    p["reversed"] = str(root / "reversed.json")
    _permuted_beadmap(bm, np.arange(bm.n_beads)[::-1]).to_json(p["reversed"])
    species = bm.bead_species()
    swap = next((i, j) for i in range(bm.n_beads) for j in range(bm.n_beads) if species[i] != species[j])
    perm = np.arange(bm.n_beads)
    perm[[swap[0], swap[1]]] = perm[[swap[1], swap[0]]]
    p["swapped"] = str(root / "swapped.json")
    _permuted_beadmap(bm, perm).to_json(p["swapped"])
    p["traj_h5"] = str(root / "aa_traj.h5")
    open(p["traj_h5"], "wb").write(b"\x89HDF\r\n\x1a\n")

    # Model directories with a corrupt manifest or NaN weights.
    def model_variant(name, edit_manifest=None, nan_weights=False):
        path = str(root / name)
        shutil.copytree(PRETRAINED, path)
        manifest_path = os.path.join(path, "cgml_model.json")
        if edit_manifest is not None:
            manifest = json.load(open(manifest_path))
            edit_manifest(manifest)
            json.dump(manifest, open(manifest_path, "w"))
        if nan_weights:
            from safetensors.torch import load_file, save_file

            weights = load_file(os.path.join(path, "weights.safetensors"))
            first = next(k for k, v in weights.items() if v.is_floating_point())
            weights[first] = weights[first].clone().fill_(float("nan"))
            save_file(weights, os.path.join(path, "weights.safetensors"))
        return path

    p["model"] = PRETRAINED
    p["model_dt0"] = model_variant("model_dt0", lambda m: m["config"].update(timestep_ps=0))
    p["model_listcfg"] = model_variant("model_listcfg", lambda m: m.update(config=[1, 2]))
    p["model_nan"] = model_variant("model_nan", nan_weights=True)
    p["out"] = str(root / "out")  # must never appear
    p["out_h5"] = str(root / "out.h5")
    return p


#: (row id, argv with {names} from the workspace, text the one-line error must contain, paths that must not exist)
ROWS = [
    ("build -o FILE", "build bead-spring --model chain -o {file}", "is a file", []),
    ("reference --ns -1", "reference {bs} --ns -1 -o {out}", "--ns must be", ["{out}"]),
    ("reference --ns nan", "reference {bs} --ns nan -o {out}", "--ns must be", ["{out}"]),
    ("reference --ns inf", "reference {bs} --ns inf -o {out}", "--ns must be", ["{out}"]),
    ("reference --every-ps 0", "reference {bs} --every-ps 0 -o {out}", "--every-ps must be", ["{out}"]),
    ("reference --timestep-fs 0", "reference {bs} --timestep-fs 0 -o {out}", "--timestep-fs must be", ["{out}"]),
    ("reference --every-ps not a step multiple", "reference {bs} --every-ps 0.003 -o {out}", "whole number",
     ["{out}"]),
    ("reference --platform Bogus", "reference {bs} --platform Bogus -o {out}", "available: ", ["{out}"]),
    ("reference unknown --whole-residues", "reference {peo} --whole-residues TFSX -o {out} --quiet",
     "no such residue", ["{out}"]),
    ("reference -o FILE", "reference {bs} -o {file}", "is a file", []),
    ("reference missing system dir", "reference {root}/nowhere -o {out}", "not a saved BuiltSystem", ["{out}"]),
    ("reference PythonForce system.xml", "reference {evil} -o {out}", "PythonForce", ["{out}", "{marker}"]),
    ("simulate PythonForce system.xml", "simulate {model} --system {evil} --ns 0.001 -o {out}", "PythonForce",
     ["{out}", "{marker}"]),
    ("coarse-grain mdtraj HDF5", "coarse-grain {traj_h5} --system {peo} -o {out_h5}", "PyTables", ["{out_h5}"]),
    ("coarse-grain garbage DCD", "coarse-grain {garbage_dcd} --system {peo} -o {out_h5}", "not a DCD",
     ["{out_h5}"]),
    ("coarse-grain --topology missing", "coarse-grain {cg_dcd} --beadmap {beadmap} --topology {root}/no.pdb "
     "-o {out_h5}", "does not exist", ["{out_h5}"]),
    ("coarse-grain -o DIR", "coarse-grain {cg_dcd} --system {peo} -o {root}", "is a directory", []),
    ("analyze HDF5 without time", "analyze {no_time} -o {out}", "has no time", ["{out}"]),
    ("analyze HDF5 time shorter than positions", "analyze {short_time} -o {out}", "time has 21 entries",
     ["{out}"]),
    ("analyze HDF5 box shorter than positions", "analyze {short_box} -o {out}", "box has shape", ["{out}"]),
    ("analyze HDF5 bead map of the wrong size", "analyze {wrong_beadmap} -o {out}", "bead map has", ["{out}"]),
    ("analyze --n-blocks 0", "analyze {good_h5} -o {out} --n-blocks 0", "--n-blocks must be", ["{out}"]),
    ("analyze -o FILE", "analyze {good_h5} -o {file}", "is a file", []),
    ("analyze --top missing", "analyze {cg_dcd} --top {root}/no.pdb --beadmap {beadmap} --frame-ps 2 -o {out}",
     "does not exist", ["{out}"]),
    ("analyze garbage DCD", "analyze {garbage_dcd} --top {cg_pdb} --beadmap {beadmap} --frame-ps 2 -o {out}",
     "not a DCD", ["{out}"]),
    ("analyze DCD truncated to half", "analyze {half_dcd} --top {cg_pdb} --beadmap {beadmap} --frame-ps 2 -o {out}",
     "is truncated", ["{out}"]),
    ("analyze bead map in reversed order", "analyze {cg_dcd} --top {cg_pdb} --beadmap {reversed} --frame-ps 2 "
     "-o {out}", "does not match", ["{out}"]),
    ("analyze bead map with swapped species", "analyze {cg_dcd} --top {cg_pdb} --beadmap {swapped} --frame-ps 2 "
     "-o {out}", "does not match", ["{out}"]),
    ("analyze --frame-ps 0", "analyze {cg_dcd} --top {cg_pdb} --beadmap {beadmap} --frame-ps 0 -o {out}",
     "--frame-ps must be", ["{out}"]),
    ("train HDF5 time shorter than positions", "train {short_time} -o {out}", "time has 21 entries", ["{out}"]),
    ("train HDF5 bead map of the wrong size", "train {wrong_beadmap} -o {out}", "bead map has", ["{out}"]),
    ("train --threads 0", "train {good_h5} -o {out} --threads 0", "--threads must be", ["{out}"]),
    ("train init_from with other bead types", "train {good_h5} -o {out} --config {init_from_yaml}", "bead types",
     ["{out}"]),
    ("train --device cuda on a CPU build", "train {good_h5} -o {out} --device cuda", "no CUDA device", ["{out}"]),
    ("calibrate -o an existing directory", "calibrate {model} {good_h5} -o {root}", "exists", []),
    ("calibrate on data of other bead types", "calibrate {model} {good_h5} -o {out} --steps 12 --burn-in 1",
     "not trained on bead types", ["{out}"]),
    ("calibrate --lag-ps 0", "calibrate {model} {good_h5} -o {out} --lag-ps 0", "--lag-ps must be", ["{out}"]),
    ("simulate --ns inf", "simulate {model} --system {peo} --ns inf -o {out}", "--ns must be", ["{out}"]),
    ("simulate --report-every-ps 0", "simulate {model} --system {peo} --ns 0.001 --report-every-ps 0 -o {out}",
     "--report-every-ps must be", ["{out}"]),
    ("simulate --device cuda on a CPU build", "simulate {model} --system {peo} --ns 0.001 --device cuda -o {out}",
     "no CUDA device", ["{out}"]),
    ("simulate manifest timestep_ps: 0", "simulate {model_dt0} --system {peo} --ns 0.001 -o {out}", "timestep_ps",
     ["{out}"]),
    ("simulate manifest config not a mapping", "simulate {model_listcfg} --system {peo} --ns 0.001 -o {out}",
     "config", ["{out}"]),
    ("simulate NaN weights", "simulate {model_nan} --system {peo} --ns 0.001 -o {out}", "finite", ["{out}"]),
    ("demo --ns -1", "demo --ns -1 -o {out}", "--ns must be", ["{out}"]),
    ("demo --threads 0", "demo --threads 0 -o {out}", "--threads must be", ["{out}"]),
    ("demo --ns too short for its MSD fit", "demo --ns 0.3 -o {out}", "use ns >= 0.5", ["{out}"]),
]

#: Rows also run as a real `python -m openmm_cgml.cli` process.
SUBPROCESS_ROWS = {"analyze DCD truncated to half", "reference PythonForce system.xml"}


def _argv(template, ws):
    return [part.format(**ws) for part in template.split()]


def _check(rc, err, verb, expect, gone, ws):
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc not in (0, None), f"exit code {rc}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"cgml {verb}:"), lines[0]
    assert expect in lines[0], lines[0]
    for path in gone:
        assert not os.path.exists(path.format(**ws)), f"{path.format(**ws)} was left behind"
    leftovers = [n for n in os.listdir(ws["root"]) if ".tmp" in n or ".saving-" in n]
    assert not leftovers, leftovers


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_line_error(row, ws, capsys):
    name, template, expect, gone = row
    argv = _argv(template, ws)
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse errors
        rc = exit_.code
    err = capsys.readouterr().err
    _check(rc, err, argv[0], expect, gone, ws)


@pytest.mark.parametrize("name", sorted(SUBPROCESS_ROWS))
def test_bad_input_in_a_real_process(name, ws):
    _, template, expect, gone = next(r for r in ROWS if r[0] == name)
    argv = _argv(template, ws)
    proc = subprocess.run([sys.executable, "-m", "openmm_cgml.cli", *argv], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    _check(proc.returncode, proc.stderr, argv[0], expect, gone, ws)
    assert "dcdplugin" not in proc.stdout + proc.stderr


def test_crafted_system_xml_is_live_but_refused(ws, tmp_path):
    """Control: OpenMM itself runs the crafted payload; BuiltSystem.load refuses it before OpenMM sees it."""
    from openmm_cgml.systems import BuiltSystem

    marker = str(tmp_path / "control_marker")
    text = crafted_system_xml(marker)
    code = f"import openmm; openmm.XmlSerializer.deserialize(open({str(tmp_path / 's.xml')!r}).read())"
    (tmp_path / "s.xml").write_text(text)
    subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert open(marker).read() == "code ran"  # the payload is real
    with pytest.raises(ValueError, match="PythonForce.*refusing"):
        BuiltSystem.load(ws["evil"])
    assert not os.path.exists(ws["marker"])
    # Character references hide nothing: the parser decodes them as OpenMM's does.
    obfuscated = str(tmp_path / "obf")
    shutil.copytree(ws["evil"], obfuscated)
    xml_path = os.path.join(obfuscated, "system.xml")
    xml = open(xml_path).read().replace('type="PythonForce"', 'type="Python&#70;orce"').replace("function=", "fn=")
    open(xml_path, "w").write(xml)
    with pytest.raises(ValueError, match="refusing"):
        BuiltSystem.load(obfuscated)
    assert not os.path.exists(ws["marker"])


def test_good_inputs_still_pass_the_checks(ws, capsys):
    """Controls: the same files, undamaged, are accepted (the checks above are not just refusing everything)."""
    out = os.path.join(ws["root"], "analysis_ok")
    assert main(["analyze", ws["cg_dcd"], "--top", ws["cg_pdb"], "--beadmap", ws["beadmap"], "--frame-ps", "2",
                 "-o", out, "--n-blocks", "2"]) == 0
    assert os.path.exists(os.path.join(out, "analysis.json"))
    assert main(["analyze", ws["good_h5"], "-o", out + "_h5", "--n-blocks", "2"]) == 0
    capsys.readouterr()

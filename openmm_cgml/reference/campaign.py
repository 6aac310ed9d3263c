"""A reference campaign: many PEO/LiTFSI systems, each built once and run by resumable all-atom MD.

A campaign is a YAML manifest::

    root: .                      # system directories live under ROOT/NAME/ (relative to the manifest)
    defaults:                    # any ReferenceConfig field except ns and seed, plus the fields below
      every_ps: 2.0
      chunk_ns: 1.0              # round-robin: each pass gives every unfinished system up to this much more MD
      min_box_nm: 2.5            # every box edge must be >= this (3x the model cutoff)
    systems:
      - {name: eo4_li9_450K, role: heldout, chains: 36, eo: 4, salt: 9, temperature_K: 450, ns: 20, seed: 11}
      - {name: eo24_li8_400K, chains: 9, eo: 24, salt: 8, temperature_K: 400, ns: 3, seed: 111,
         reference: {timestep_fs: 4.0, hydrogen_mass_amu: 4.0}}   # this system's own run settings

Each system's directory holds ``system/`` (the ``cgml build`` output) and ``reference/`` (the ``cgml reference``
run directory), so a system can also be continued by hand with ``cgml reference NAME/system -o NAME/reference``.
The build uses ``seed``; the MD uses ``seed + 1``. Both stages resume: a built system is never rebuilt and a
reference run continues from its last checkpoint, so ``cgml campaign run`` after a kill picks up where it
stopped.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field, fields
from typing import Callable, List, Optional, Sequence

from ..systems import BuiltSystem, build_peo_litfsi
from ..yamlio import read_yaml_mapping
from .runner import DATASET, ReferenceConfig, reference_status, run_reference

#: Density used to estimate a box edge from a composition before the box is built (g/cm^3). PEO melts at
#: 350-450 K sit near 1.06-1.13 g/cm^3 and LiTFSI raises it; the built box is checked again, exactly.
ESTIMATE_DENSITY_G_CM3 = 1.10
_AMU_NM3_TO_G_CM3 = 1.66053906660e-3
_EO_AMU, _END_GROUPS_AMU, _LITFSI_AMU = 44.053, 46.069, 287.09
ROLES = ("train", "heldout")


@dataclass
class CampaignSystem:
    """One PEO/LiTFSI composition of a campaign: ``chains`` x CH3O(CH2CH2O)``eo``CH3 + ``salt`` LiTFSI."""

    name: str
    chains: int
    eo: int
    salt: int
    temperature_K: float
    ns: float
    role: str = "train"
    seed: int = 1
    #: this system's own run settings (ReferenceConfig fields), over the manifest's defaults
    reference: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or os.sep in self.name or self.name.startswith("."):
            raise ValueError(f"campaign system name {self.name!r} must be a plain directory name")
        for key, low in (("chains", 1), ("eo", 1), ("salt", 1), ("seed", 0)):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"system {self.name}: {key} must be an integer >= {low}, got {value!r}")
        for key in ("temperature_K", "ns"):
            value = getattr(self, key)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"system {self.name}: {key} must be a finite number > 0, got {value!r}")
        if self.role not in ROLES:
            raise ValueError(f"system {self.name}: role must be one of {ROLES}, got {self.role!r}")
        if not isinstance(self.reference, dict):
            raise ValueError(f"system {self.name}: reference must be a mapping of run settings")

    @property
    def eo_per_li(self) -> float:
        return self.chains * self.eo / self.salt

    @property
    def n_atoms(self) -> int:
        return self.chains * (7 * self.eo + 9) + 16 * self.salt

    def estimated_box_nm(self, density_g_cm3: float = ESTIMATE_DENSITY_G_CM3) -> float:
        """Cubic box edge (nm) of this composition at ``density_g_cm3``."""
        mass = self.chains * (_EO_AMU * self.eo + _END_GROUPS_AMU) + self.salt * _LITFSI_AMU
        return (mass * _AMU_NM3_TO_G_CM3 / density_g_cm3) ** (1.0 / 3.0)


@dataclass
class Campaign:
    """A validated manifest: where the systems live, the shared run settings, and the systems."""

    root: str
    systems: List[CampaignSystem]
    reference: dict = field(default_factory=dict)
    chunk_ns: float = 1.0
    min_box_nm: float = 2.5
    manifest: Optional[str] = None

    def system(self, name: str) -> CampaignSystem:
        for system in self.systems:
            if system.name == name:
                return system
        raise ValueError(f"no system named {name} in the campaign; known: " + ", ".join(s.name for s in self.systems))

    def system_dir(self, system: CampaignSystem) -> str:
        return os.path.join(self.root, system.name, "system")

    def run_dir(self, system: CampaignSystem) -> str:
        return os.path.join(self.root, system.name, "reference")

    def config(self, system: CampaignSystem, ns: float) -> ReferenceConfig:
        return ReferenceConfig(ns=ns, seed=system.seed + 1, **{**self.reference, **system.reference})


_REFERENCE_FIELDS = {f.name for f in fields(ReferenceConfig)} - {"ns", "seed"}
_SYSTEM_FIELDS = {f.name for f in fields(CampaignSystem)}


def _refuse_unknown(keys, known, where: str):
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def load_campaign(path: str) -> Campaign:
    """Read and validate a campaign manifest (YAML); every error is one line that names what to fix."""
    data = read_yaml_mapping(path, "campaign manifest")
    _refuse_unknown(data, ("root", "defaults", "systems"), f"campaign manifest {path}")
    defaults = dict(data.get("defaults") or {})
    if not isinstance(data.get("defaults") or {}, dict):
        raise ValueError(f"campaign manifest {path}: defaults must be a mapping")
    chunk_ns = defaults.pop("chunk_ns", 1.0)
    min_box_nm = defaults.pop("min_box_nm", 2.5)
    _refuse_unknown(defaults, _REFERENCE_FIELDS | {"chunk_ns", "min_box_nm"}, f"{path}: defaults")
    for key, value in (("chunk_ns", chunk_ns), ("min_box_nm", min_box_nm)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{path}: defaults.{key} must be a finite number > 0, got {value!r}")
    try:
        ReferenceConfig(**defaults).steps_per_frame  # validates the run settings before any work
    except TypeError as error:
        raise ValueError(f"{path}: defaults: {error}") from None
    entries = data.get("systems")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"campaign manifest {path}: 'systems' must be a non-empty list")
    systems = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: systems[{i}] must be a mapping")
        _refuse_unknown(entry, _SYSTEM_FIELDS, f"{path}: systems[{i}]")
        missing = sorted({"name", "chains", "eo", "salt", "temperature_K", "ns"} - set(entry))
        if missing:
            raise ValueError(f"{path}: systems[{i}] lacks {', '.join(missing)}")
        system = CampaignSystem(**entry)
        _refuse_unknown(system.reference, _REFERENCE_FIELDS, f"{path}: system {system.name}: reference")
        ReferenceConfig(**{**defaults, **system.reference}).steps_per_frame
        edge = system.estimated_box_nm()
        if edge < min_box_nm:
            raise ValueError(f"{path}: system {system.name} would be a {edge:.2f} nm box at "
                             f"{ESTIMATE_DENSITY_G_CM3} g/cm3, smaller than min_box_nm={min_box_nm}; add molecules")
        systems.append(system)
    names = [s.name for s in systems]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: system names must be unique")
    root = os.path.join(os.path.dirname(os.path.abspath(path)), str(data.get("root", ".")))
    return Campaign(root=root, systems=systems, reference=defaults, chunk_ns=float(chunk_ns),
                    min_box_nm=float(min_box_nm), manifest=os.path.abspath(path))


def simulated_ns(campaign: Campaign, system: CampaignSystem) -> float:
    """Reference MD done so far for ``system`` (ns; 0 when not started)."""
    if not os.path.exists(os.path.join(campaign.run_dir(system), DATASET)):
        return 0.0
    return reference_status(campaign.run_dir(system))["time_ps"] / 1000.0


def build_system(campaign: Campaign, system: CampaignSystem, progress: bool = True) -> BuiltSystem:
    """Load the system's built box, building (and saving) it first if it does not exist yet."""
    directory = campaign.system_dir(system)
    if os.path.exists(os.path.join(directory, "metadata.json")):
        built = BuiltSystem.load(directory)
    else:
        from openmm import unit

        built = build_peo_litfsi(n_chains=system.chains, eo_per_chain=system.eo, n_salt=system.salt,
                                 temperature=system.temperature_K * unit.kelvin, seed=system.seed, progress=progress)
        built.save(directory)
    edge = _min_edge(built)
    if edge < campaign.min_box_nm:
        raise ValueError(f"system {system.name}: the built box edge is {edge:.2f} nm < min_box_nm="
                         f"{campaign.min_box_nm}; add molecules to it in the manifest")
    return built


def _min_edge(built: BuiltSystem) -> float:
    from openmm import unit

    vectors = built.box_vectors.value_in_unit(unit.nanometer)
    return float(min(vectors[i][i] for i in range(3)))


def run_campaign(campaign: Campaign, only: Optional[Sequence[str]] = None, progress: bool = True,
                 on_chunk: Optional[Callable[[CampaignSystem, float], None]] = None,
                 scheduler: Optional[str] = None) -> None:
    """Run every (selected) system to its target.

    On this machine the systems take turns in chunks of ``campaign.chunk_ns``, so every system moves forward
    when a session's time is short; ``on_chunk(system, ns_done)`` is called after each chunk. A system that
    cannot continue (a one-line ValueError, e.g. its run directory holds a run of another box) is reported and
    left out while the others go on; the call then ends with a ValueError naming every such system. With a Dask
    ``scheduler`` (see :mod:`openmm_cgml.cluster`) each system is one task that runs to its target; a task whose
    worker dies continues on another worker from the run's last checkpoint.
    """
    selected = [campaign.system(name) for name in only] if only is not None else list(campaign.systems)
    if scheduler is not None:
        from ..cluster import connect, run_tasks

        with connect(scheduler) as client:
            run_tasks(client, run_campaign_system, [(campaign.manifest, s.name) for s in selected],
                      desc="campaign", progress=progress)
        return
    failed = {}
    while True:
        pending = [s for s in selected if s.name not in failed and simulated_ns(campaign, s) < s.ns - 1e-9]
        if not pending:
            break
        for system in pending:
            try:
                _run_chunk(campaign, system, min(system.ns, simulated_ns(campaign, system) + campaign.chunk_ns),
                           progress)
            except ValueError as error:  # this system cannot go on (e.g. its run is of another box): the rest can
                failed[system.name] = str(error).splitlines()[0]
                print(f"cgml campaign: {system.name} stopped: {failed[system.name]}", file=sys.stderr)
                continue
            if on_chunk is not None:
                on_chunk(system, simulated_ns(campaign, system))
    if failed:
        raise ValueError(f"{len(failed)} system(s) stopped, the others ran to their targets: "
                         + "; ".join(f"{name}: {why}" for name, why in failed.items()))


def _run_chunk(campaign: Campaign, system: CampaignSystem, ns: float, progress: bool):
    built = build_system(campaign, system, progress=progress)
    run_reference(built, campaign.run_dir(system), campaign.config(system, ns), resume=True, progress=progress)


def run_campaign_system(manifest: str, name: str) -> float:
    """Dask task: run one system of the campaign in ``manifest`` to its target (resumes); returns ns done."""
    campaign = load_campaign(manifest)
    system = campaign.system(name)
    _run_chunk(campaign, system, system.ns, progress=False)
    return simulated_ns(campaign, system)


def campaign_status(campaign: Campaign) -> List[dict]:
    """One row per system: name, role, composition, ns done / target, whether it is built, and its dataset (whose
    MSD exponents :func:`openmm_cgml.analysis.dataset_msd_exponents` gives: analysis is a later stage)."""
    return [{"name": s.name, "role": s.role, "chains": s.chains, "eo": s.eo, "salt": s.salt,
             "eo_per_li": round(s.eo_per_li, 1), "temperature_K": s.temperature_K, "atoms": s.n_atoms,
             "built": os.path.exists(os.path.join(campaign.system_dir(s), "metadata.json")),
             "ns_done": simulated_ns(campaign, s), "ns_target": s.ns,
             "dataset": os.path.join(campaign.run_dir(s), DATASET)} for s in campaign.systems]

"""The cgml command: build, reference, coarse-grain, train, train-dig, sample, simulate, analyze, benchmark, demo.

The verbs mirror the pipeline stages.

Each verb imports its stage lazily so ``cgml --help`` is fast and one stage's heavy imports never slow another.
"""
import argparse
import json
import os
import sys


def _build(args):
    from openmm import unit

    from .systems import build_bead_spring, build_peo_litfsi

    if args.kind == "peo-litfsi":
        composition = {k: v for k, v in (("n_chains", args.chains), ("n_salt", args.salt)) if v is not None}
        built = build_peo_litfsi(  # the function's defaults: the default box (22 x EO8 + 11 LiTFSI)
            **composition,
            eo_per_chain=args.eo,
            temperature=(400.0 if args.temperature is None else args.temperature) * unit.kelvin,
            charge_scale=args.charge_scale,
            mixing=args.mixing,
            seed=args.seed,
        )
    else:
        built = build_bead_spring(kind=args.model, n_chains=args.chains, chain_length=args.chain_length,
                                  temperature=(300.0 if args.temperature is None else args.temperature) * unit.kelvin,
                                  sequence=args.sequence, bond=args.bond, density=args.density, seed=args.seed)
    built.save(args.output, overwrite=args.overwrite)
    print(f"wrote {args.output}: {built.topology.getNumAtoms()} atoms; {json.dumps(built.metadata.get('density_g_cm3'))} g/cm3")


def _reference(args):
    from .reference import ReferenceConfig, run_reference
    from .systems import BuiltSystem

    config = ReferenceConfig(  # checks every setting before the system is loaded
        ns=args.ns,
        every_ps=args.every_ps,
        timestep_fs=args.timestep_fs,
        seed=args.seed,
        platform=args.platform,
        threads=args.threads,
        checkpoint_every=args.checkpoint_every,
        atoms_per_bead=args.atoms_per_bead,
        whole_residues=tuple(args.whole_residues),
        hydrogen_mass_amu=args.hydrogen_mass,
    )
    built = BuiltSystem.load(args.system)
    out = args.output or os.path.join(args.system, "reference")
    path = run_reference(built, out, config, resume=True, progress=not args.quiet)
    print(f"CG dataset: {path}")


def _campaign_table(campaign) -> str:
    """ns done / target per system, and each species' MSD exponent (± error) once a run has 100 frames."""
    from .analysis import dataset_msd_exponents
    from .reference import campaign_status

    n_blocks = 5
    lines = [f"{'system':28s} {'role':7s} {'EO:Li':>5s} {'T/K':>4s} {'atoms':>5s} {'ns done/target':>15s}  "
             f"{'α lags (ns)':>11s}  MSD exponent α"]
    for row in campaign_status(campaign):
        window, alphas = "", ""
        exponents = dataset_msd_exponents(row["dataset"], n_blocks) if row["ns_done"] > 0 else None
        if exponents:
            first = next(iter(exponents.values()))
            window = f"{first['fit_start_ps'] / 1000:.2g}-{first['fit_end_ps'] / 1000:.2g}"
            alphas = " ".join(f"{k}={v['msd_exponent']:.2f}"
                              + ("" if v["msd_exponent_err"] is None else f"±{v['msd_exponent_err']:.2f}")
                              for k, v in exponents.items())
        lines.append(f"{row['name']:28s} {row['role']:7s} {row['eo_per_li']:5.1f} {row['temperature_K']:4.0f} "
                     f"{row['atoms']:5d} {row['ns_done']:7.2f}/{row['ns_target']:<7g}  {window:>11s}  {alphas}")
    lines.append(f"α: log-log slope of the mean MSD of {n_blocks} time blocks over the lags each block's D is fit on "
                 f"(20-100 % of half a block), ± standard error over the blocks; D is reported where α >= 0.9.")
    return "\n".join(lines)


def _campaign(args):
    from .reference import load_campaign, run_campaign

    campaign = load_campaign(args.manifest)
    if args.action == "run":
        def report(system, ns_done):
            if not args.quiet:
                print(f"{system.name}: {ns_done:.2f} / {system.ns:g} ns", flush=True)

        run_campaign(campaign, only=args.only, progress=not args.quiet, on_chunk=report, scheduler=args.scheduler)
    print(_campaign_table(campaign))


def _coarse_grain(args):
    from .mapping import BeadMap
    from .reference import coarse_grain_trajectory
    from .systems import BuiltSystem

    from .reference.coarse_grain import check_trajectory_file

    check_trajectory_file(args.trajectory)
    if args.beadmap:
        beadmap = BeadMap.from_json(args.beadmap)
        topology = args.topology
    else:
        built = BuiltSystem.load(args.system)
        beadmap = BeadMap.from_openmm(built.topology, built.system, atoms_per_bead=args.atoms_per_bead)
        topology = args.topology or os.path.join(args.system, "topology.pdb")
    path = coarse_grain_trajectory(args.trajectory, topology, beadmap, args.output)
    print(f"CG dataset: {path}")


def _analyze(args):
    from .analysis import analyze_trajectory, format_table
    from .data import CGDataset

    stride = args.stride
    unwrapped = args.unwrapped
    if args.trajectory.endswith((".h5", ".hdf5")):
        unwrapped = True  # CG datasets store unwrapped positions with whole molecules
        with CGDataset(args.trajectory) as ds:
            positions = ds.positions[::stride]
            box = ds.box[::stride] if ds.box is not None else None
            beadmap = ds.beadmap
            times = ds.time[::stride]
    else:
        positions, box, times, beadmap = _bead_trajectory(args, stride)
    result = analyze_trajectory(
        positions, box, times, beadmap.bead_species(), beadmap.bead_masses, beadmap.bead_molecule,
        out_dir=args.output, n_blocks=args.n_blocks, fit_range=args.fit_range, unwrapped=unwrapped,
    )
    print(format_table(result))
    print(f"wrote {os.path.join(args.output, 'analysis.json')} and plots")


def _bead_trajectory(args, stride: int):
    """Positions (nm), box (nm), times (ps) and BeadMap of a CG trajectory in any format mdtraj reads."""
    import mdtraj
    import numpy as np

    from .mapping import BeadMap

    if not (args.top and args.beadmap and args.frame_ps):
        raise ValueError("a DCD/XTC/... trajectory needs --top (CG PDB), --beadmap (beadmap.json) and --frame-ps")
    from .reference.coarse_grain import check_trajectory_file

    check_trajectory_file(args.trajectory)
    if not os.path.isfile(args.top):
        raise FileNotFoundError(f"--top {args.top} does not exist")
    beadmap = BeadMap.from_json(args.beadmap)
    traj = mdtraj.load(args.trajectory, top=args.top, stride=stride)
    if traj.n_atoms != beadmap.n_beads:
        raise ValueError(f"{args.trajectory} has {traj.n_atoms} particles but {args.beadmap} maps {beadmap.n_beads} beads")
    _check_beadmap_matches_topology(beadmap, traj.topology, args.beadmap, args.top)
    box = traj.unitcell_lengths.astype(np.float64) if traj.unitcell_lengths is not None else None
    return traj.xyz.astype(np.float64), box, np.arange(traj.n_frames) * args.frame_ps * stride, beadmap


def _check_beadmap_matches_topology(beadmap, topology, beadmap_path: str, top_path: str):
    """Refuse a bead map whose beads are not the topology's, bead by bead (type and species, in order).

    The CG topology (``BeadMap.to_topology``, e.g. the demo's cg.pdb) names bead b's atom ``B<type>`` and its
    residue after the first three letters of its species; a reversed or reshuffled bead map breaks the match.
    """
    species = beadmap.bead_species()
    for b, atom in enumerate(topology.atoms):
        want_atom, want_res = f"B{beadmap.bead_types[b]}", species[b][:3]
        if atom.name != want_atom or atom.residue.name.strip() != want_res.strip():
            raise ValueError(f"{beadmap_path} does not match {top_path}: bead {b} is {want_atom}/{want_res} in the "
                             f"bead map but {atom.name}/{atom.residue.name} in the topology (wrong order or species?)")


def _set_threads(threads):
    """``--threads N`` of the training, simulation and demo verbs: torch's intra-op threads here and in torchrun's
    ranks (which read OMP_NUM_THREADS at start), and OpenMM's CPU threads (read when a CPU context starts). Threads
    that spin on cores another job uses cost far more than they give: measured on 2 cores with reference MD on one,
    `cgml demo` took 60 s per learned step with torch's default of 2 threads against 1.6 s with 1, and training ran
    ~3x faster with 1."""
    if threads:
        import torch

        os.environ["OMP_NUM_THREADS"] = os.environ["OPENMM_CPU_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def _train(args):
    _set_threads(args.threads)
    if args.nproc > 1:  # data-parallel: the same training under torchrun, N ranks on this machine
        from .training.distributed import run_torchrun

        argv = [*args.datasets, "-o", args.output, "--device", args.device]
        argv += ["--config", args.config] if args.config else []
        argv += ["--seed", str(args.seed)] if args.seed is not None else []
        argv += ["--no-resume"] if args.no_resume else []
        run_torchrun(args.nproc, argv)
        return
    from .training import train_main

    # train() also writes contacts.json (the collision yardstick of `simulate`) once training has completed
    train_main(args.datasets, args.output, config_path=args.config, device=args.device, seed=args.seed,
               resume=not args.no_resume)


def _calibrate(args):
    _set_threads(args.threads)
    from .simulate.calibrate import calibrate_noise, mean_ratio, write_calibrated

    if os.path.exists(args.output):
        raise ValueError(f"-o {args.output} exists; calibrate writes a new model directory")
    result = calibrate_noise(args.model, args.datasets, n_steps=args.steps, replicas=args.replicas,
                             lag_ps=args.lag_ps, iterations=args.iterations, burn_in=args.burn_in,
                             seed=args.seed, fit_size=args.fit_size)
    for k, it in enumerate(result["history"]):
        ratios = ", ".join(f"{sp} {mean_ratio(r):.2f}" for sp, r in it["msd_ratio"].items())
        scales = ", ".join(f"{sp} {v:.3f}" for sp, v in sorted(it["noise_scale"].items())) or "none"
        scales += "".join(f", {sp} x size^{b:.3f}" for sp, b in sorted(it["noise_size_exponent"].items()))
        print(f"pass {k + 1}: noise_scale {scales} -> rollout/data MSD at {result['lag_ps']:g} ps: {ratios}")
    final = result["history"][-1]["msd_ratio"]
    for path in result["datasets"]:  # the spread that one geometric mean per residue hides
        print(f"  {path}: " + ", ".join(f"{sp} {r[path]:.2f}" for sp, r in sorted(final.items()) if path in r))
    print(f"calibrated model written to {write_calibrated(args.model, args.output, result)}")


def _train_dig(args):
    _set_threads(args.threads)
    from .training.dig import train_dig_main

    train_dig_main(args.datasets, args.output, config_path=args.config, device=args.device,
                   resume=not args.no_resume)


def _sample(args):
    from .dig import sample_main

    path = sample_main(args.dig_dir, args.n, args.output, seed=args.seed, method=args.method, steps=args.steps,
                       device=args.device, overwrite=args.overwrite)
    print(f"wrote {args.n} DiG samples to {path}")


def _benchmark(args):
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "benchmarks", "__main__.py")):
        raise FileNotFoundError("the benchmarks live in the source checkout; run `cgml benchmark` from a clone "
                                "installed with `pip install -e .`")
    rc = subprocess.call([sys.executable, "-m", "benchmarks", *(["--only", *args.only] if args.only else [])],
                         cwd=root)
    if rc:
        raise SystemExit(rc)


def _simulate(args):
    _set_threads(args.threads)
    from .simulate import parse_refine
    from .workflows import simulate_ensemble, simulate_main

    options = dict(replicas=args.replicas, seed=args.seed, device=args.device, report_every_ps=args.report_every_ps,
                   dig_path=args.dig, progress=not args.quiet, checkpoint_every=args.checkpoint_every,
                   refine=parse_refine(args.refine), allow_unseen_types=args.allow_unseen_types)
    try:
        if args.scheduler is not None:  # one Dask task per replica, each resumable from its own checkpoint
            stats = simulate_ensemble(args.model, args.system, args.ns, args.output, args.scheduler, **options)
        else:
            stats = simulate_main(args.model, args.system, args.ns, args.output, **options)
    except KeyboardInterrupt as stop:
        # Ctrl-C: the engine stopped at a step boundary and saved a checkpoint (or the last one stays valid).
        where = f" at learned step {stop.step_index}" if hasattr(stop, "step_index") else ""
        print(f"cgml simulate: interrupted{where}; {args.output} keeps a resumable state: run the same command "
              "to continue", file=sys.stderr)
        raise SystemExit(130) from None
    resumed = f" (resumed from step {stats['resumed_from_step']})" if stats.get("resumed_from_step") else ""
    print(f"{stats['replicas']} replicas x {stats['n_beads']} beads, {stats['cg_ns']:g} ns each{resumed}: "
          f"{stats['ns_per_day_total']:.3g} simulated ns/day in total, {stats['replica_steps_per_s']:.3g} "
          f"replica-steps/s; collisions/frame {stats.get('collisions_per_frame', 'n/a')}; wrote {args.output}")


def _demo(args):
    _set_threads(args.threads)
    from .training import model_path
    from .workflows import run_demo

    try:
        summary = run_demo(args.output, seed=args.seed, model_path=model_path(args.model), progress=not args.quiet,
                           **({} if args.ns is None else {"ns": args.ns}))
    except KeyboardInterrupt:
        print(f"cgml demo: interrupted; nothing was written to {args.output}", file=sys.stderr)
        raise SystemExit(130) from None
    box = "x".join(f"{edge:.2f}" for edge in summary["box_nm"])
    start = "loaded" if summary["allatom_box"] != "built" else "built"
    print(f"demo: {summary['n_atoms']} atoms ({box} nm box, {start} in {summary['build_seconds']:.1f} s) -> "
          f"{summary['n_beads']} beads; {summary['cg_ns']:g} ns of CG time in {summary['simulate_seconds']:.1f} s "
          f"({summary['cg_ns_per_day']:.3g} ns/day)")
    for name, d in summary["D_cm2_per_s"].items():
        alpha, err = summary["msd_exponent"][name], summary["msd_exponent_err"][name]
        start_ps, end_ps = summary["msd_fit_window_ps"][name]
        exponent = f"MSD exponent {alpha:.2f}" + (f" ± {err:.2f}" if err is not None else "")
        window = f"over {start_ps:g}-{end_ps:g} ps"
        print(f"  D({name}) = {d:.3g} cm^2/s ({exponent} {window})" if d is not None else
              f"  D({name}) withheld: sub-diffusive ({exponent} < 0.9 {window})")
    print(f"wrote {args.output}/ (cg.dcd, cg.pdb, msd.png, demo.json); wall time {summary['wall_seconds']:.1f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cgml", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)

    p = sub.add_parser("build", help="build an all-atom system and save it to a directory")
    p.add_argument("kind", choices=["peo-litfsi", "bead-spring"])
    p.add_argument("-o", "--output", required=True, help="output directory (must not hold files)")
    p.add_argument("--chains", type=int, default=None,
                   help="chains (default 22 PEO; 1 bead-spring chain or 20 in a melt)")
    p.add_argument("--eo", type=int, default=8, help="EO units per PEO chain")
    p.add_argument("--salt", type=int, default=None, help="LiTFSI pairs (default 11)")
    p.add_argument("--temperature", type=float, default=None, help="K (default 400 PEO/LiTFSI, 300 bead-spring)")
    p.add_argument("--charge-scale", type=float, default=0.8)
    p.add_argument("--mixing", choices=["lorentz-berthelot", "geometric"], default="lorentz-berthelot")
    p.add_argument("--model", choices=["chain", "kremer-grest"], default="kremer-grest", help="bead-spring kind")
    p.add_argument("--chain-length", type=int, default=None, help="beads per bead-spring chain (default 30 / 50)")
    p.add_argument("--sequence", choices=["random", "block"], default="random", help="bead-spring chain: bead types")
    p.add_argument("--bond", choices=["harmonic", "fene"], default="harmonic", help="bead-spring chain bonds")
    p.add_argument("--density", type=float, default=0.85, help="Kremer-Grest beads per sigma^3")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_build)

    p = sub.add_parser("reference", help="run all-atom reference MD of a built system, writing a CG dataset")
    p.add_argument("system", help="directory written by `cgml build`")
    p.add_argument("--ns", type=float, default=1.0, help="simulated time, ns")
    p.add_argument("--every-ps", type=float, default=2.0, help="frame interval, ps")
    p.add_argument("--timestep-fs", type=float, default=2.0)
    p.add_argument("--hydrogen-mass", type=float, default=None,
                   help="repartition hydrogen masses to this many amu (with --timestep-fs 4; see benchmarks/hmr.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--platform", default=None, help="OpenMM platform (default: fastest available)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU platform threads (default: OpenMM's); 1 makes a resumed run bit-equal to an uninterrupted one")
    p.add_argument("--checkpoint-every", type=int, default=25, help="frames between checkpoints")
    p.add_argument("--atoms-per-bead", type=int, default=7)
    p.add_argument("--whole-residues", nargs="*", default=[], help="residues mapped to one bead each, e.g. TFSI")
    p.add_argument("-o", "--output", default=None, help="run directory (default SYSTEM/reference); resumes if present")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_reference)

    p = sub.add_parser("campaign", help="run (resumable) or show a multi-system reference campaign from a YAML manifest")
    p.add_argument("action", choices=["run", "status"])
    p.add_argument("manifest", help="campaign YAML (e.g. benchmarks/data/campaign.yaml)")
    p.add_argument("--only", nargs="*", default=None, help="run only these systems (names in the manifest)")
    p.add_argument("--scheduler", default=None,
                   help="run the systems as Dask tasks: local:N (LocalCluster), tcp://HOST:PORT or a scheduler file")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_campaign)

    p = sub.add_parser("coarse-grain", help="map an existing all-atom trajectory to a CG dataset")
    p.add_argument("trajectory", help="any trajectory mdtraj reads (DCD, XTC, TRR, ...; mdtraj HDF5 needs "
                                      "PyTables)")
    p.add_argument("--system", help="directory written by `cgml build` (for the bond graph and masses)")
    p.add_argument("--beadmap", help="an existing beadmap.json instead of --system")
    p.add_argument("--topology", help="topology file for the trajectory (default SYSTEM/topology.pdb)")
    p.add_argument("--atoms-per-bead", type=int, default=7)
    p.add_argument("-o", "--output", required=True, help="output .h5 file")
    p.set_defaults(func=_coarse_grain)

    p = sub.add_parser("analyze", help="MSD/diffusivity per species, RDFs, Rg2 of a CG trajectory")
    p.add_argument("trajectory", help="CG dataset (.h5) written by `cgml reference`, `coarse-grain` or `simulate`, "
                                      "or a bead trajectory mdtraj reads (DCD, XTC, ...; unwrapped or wrapped)")
    p.add_argument("--top", help="CG topology (PDB) of a DCD/XTC trajectory, e.g. the demo's cg.pdb")
    p.add_argument("--beadmap", help="beadmap.json of a DCD/XTC trajectory (bead species, masses, molecules)")
    p.add_argument("--frame-ps", type=float, help="time between frames of a DCD/XTC trajectory, ps")
    p.add_argument("-o", "--output", required=True, help="directory for analysis.json and the PNG plots")
    p.add_argument("--n-blocks", type=int, default=5, help="time blocks for the diffusivity error bars")
    p.add_argument("--fit-range", type=float, default=0.2, help="fit the MSD from this fraction of the longest lag")
    p.add_argument("--stride", type=int, default=1, help="use every n-th frame")
    p.add_argument("--unwrapped", action="store_true",
                   help="the DCD/XTC positions are already unwrapped (the demo's and any CGMLIntegrator run's with "
                        "enforcePeriodicBox=False): keep moves over half a box per frame instead of folding them back")
    p.set_defaults(func=_analyze)

    p = sub.add_parser("train", help="train the dynamics + score GNNs on CG datasets (resumes an interrupted run)")
    p.add_argument("datasets", nargs="+", help="CG datasets (.h5) written by `cgml reference` or `coarse-grain`")
    p.add_argument("-o", "--output", required=True, help="model directory")
    p.add_argument("--config", default=None, help="YAML of TrainConfig fields (default: built-in defaults)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run in --output")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel ranks on this machine (DDP under torchrun: gloo on CPU, NCCL on CUDA); "
                        "batch_size stays the global batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: torch's)")
    p.set_defaults(func=_train)

    p = sub.add_parser("calibrate", help="fit a model's per-residue noise factors so rollouts on training sets "
                                         "reproduce their MSD (writes a calibrated copy)")
    p.add_argument("model", help="shipped model name or model directory")
    p.add_argument("datasets", nargs="+", help="the model's training CG datasets (.h5); keep held-out systems out")
    p.add_argument("-o", "--output", required=True, help="new model directory")
    p.add_argument("--steps", type=int, default=25, help="model steps per rollout")
    p.add_argument("--burn-in", type=int, default=5, help="first steps of each rollout left out of the MSD")
    p.add_argument("--replicas", type=int, default=2, help="rollouts per dataset")
    p.add_argument("--lag-ps", type=float, default=1000.0, help="lag of the MSD that is matched, ps")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--fit-size", action="store_true",
                   help="also fit each residue's exponent on its molecule size (beads) where the datasets' chain "
                        "lengths differ, so the MSD ratio goes to 1 along the chain length, not only on average")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("train-dig", help="train a DiG equilibrium sampler on CG datasets (denoising score matching)")
    p.add_argument("datasets", nargs="+")
    p.add_argument("-o", "--output", required=True, help="DiG model directory")
    p.add_argument("--config", default=None, help="YAML of DiGConfig fields")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.set_defaults(func=_train_dig)

    p = sub.add_parser("sample", help="draw independent equilibrium structures from a DiG model")
    p.add_argument("dig_dir")
    p.add_argument("-n", type=int, required=True, help="number of structures")
    p.add_argument("-o", "--output", required=True, help="output file (.npz, .h5 or .dcd)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["dpm", "ode", "ancestral"], default="dpm",
                   help="probability-flow ODE by DPM-Solver++(2M), 20 steps (dpm) or by Heun, 50 steps (ode); "
                        "or the reverse SDE (ancestral)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_sample)

    p = sub.add_parser("simulate", help="run R replicas of a built system with a learned CG model (batched engine)")
    p.add_argument("model", help="model directory (e.g. written by `cgml train`)")
    p.add_argument("--system", required=True, help="directory written by `cgml build` (the all-atom start)")
    p.add_argument("--ns", type=float, required=True, help="CG time per replica, ns")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="replica r uses seed + r")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--report-every-ps", type=float, default=None, help="frame interval (default: every step)")
    p.add_argument("--dig", default=None, help="DiG model directory: start each replica from a DiG sample")
    p.add_argument("--allow-unseen-types", action="store_true",
                   help="embed bead types the model (and DiG) never saw from their atom graphs instead of refusing")
    p.add_argument("--refine", default="model",
                   help="score refinement: model (its default), none, or SCHEME:LxK over the model's last L noise "
                        "levels with K steps per level, SCHEME langevin (annealed Langevin, L*K evaluations) or pc "
                        "(predictor-corrector, L*K + L-1 evaluations), e.g. pc:4x0; a suffix ,core=F pushes apart "
                        "non-bonded beads closer than F times their closest approach in the training data and ,cap=G "
                        "pulls bonds longer than G times the longest training bond back, e.g. model,core=0.9,cap=1.2; "
                        ",step=S sets the Langevin step size at the lowest level (nm²); ,denoise=S ends with a "
                        "noise-free denoising step at noise level S (nm); ,rdf=G raises each pair's "
                        "core to where its training RDF first reaches G; ,wall=W adds W times the repulsive wall "
                        "fitted to the training RDF of the model's rdf_wall_pairs (e.g. LI-LI) to the score (0: off); "
                        ",temp=T scales the refinement's Langevin noise by sqrt(T) (1: standard); "
                        ",cluster=F lets ions share the noise of the "
                        "molecule that binds them with fraction F of their variance (ion-cluster noise); ,stepcap=F "
                        "caps each bead's step at F times the longest one of its type in the training data (0: off)")
    p.add_argument("--checkpoint-every", type=int, default=50,
                   help="learned steps between checkpoints (a killed run resumes from the last one)")
    p.add_argument("-o", "--output", required=True,
                   help="output directory (replica_r.h5, checkpoint.npz, simulate.json); the same command on an "
                        "unfinished run resumes it")
    p.add_argument("--scheduler", default=None,
                   help="run each replica as a Dask task (own directory OUT/replica_r/, resumable on another worker "
                        "if one dies): local:N (LocalCluster), tcp://HOST:PORT or a scheduler file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and OpenMM (default: theirs)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_simulate)

    p = sub.add_parser("benchmark", help="run the benchmarks (python -m benchmarks) and write their report")
    p.add_argument("--only", nargs="*", help="benchmark names (allatom_throughput, model_step, speedup, dig, ...)")
    p.set_defaults(func=_benchmark)

    p = sub.add_parser("demo", help="run the shipped model on the shipped default PEO/LiTFSI box (about a minute)")
    p.add_argument("-o", "--output", default="cgml-demo", help="output directory (default ./cgml-demo)")
    p.add_argument("--ns", type=float, default=None, help="CG time, ns (default 1: openmm_cgml.workflows.DEMO_NS)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="shipped model name or model directory (default: the shipped "
                   "default model)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and OpenMM (default 1: the demo's 220 beads gain little from more, "
                        "and threads competing with other jobs for cores slow it many times over)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_demo)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb == "coarse-grain" and not (args.system or args.beadmap):
        parser.error("coarse-grain needs --system DIR or --beadmap FILE")
    if args.verb == "coarse-grain" and args.beadmap and not args.topology:
        parser.error("coarse-grain with --beadmap needs --topology (the all-atom topology of the trajectory)")
    try:
        _check_arguments(args)
        args.func(args)
    except (ValueError, OSError, FloatingPointError) as err:
        # Bad input (or a diverging training run): one line that says what to fix, no traceback.
        print(f"cgml {args.verb}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cgml {args.verb}: interrupted; run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    except RuntimeError as err:
        if not _is_blow_up(err):
            raise
        print(f"cgml {args.verb}: the learned simulation blew up: {_one_line(err)}", file=sys.stderr)
        return 3
    return 0


def _one_line(err: Exception) -> str:
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


#: Options that must be finite and > 0 (checked before any work, for every verb that has them).
_POSITIVE_FLOATS = {"ns": "--ns", "every_ps": "--every-ps", "timestep_fs": "--timestep-fs", "frame_ps": "--frame-ps",
                    "report_every_ps": "--report-every-ps", "temperature": "--temperature", "lag_ps": "--lag-ps"}
#: Integer options that must be >= 1.
_POSITIVE_INTS = {"n_blocks": "--n-blocks", "replicas": "--replicas", "n": "-n", "stride": "--stride",
                  "atoms_per_bead": "--atoms-per-bead", "steps": "--steps", "chains": "--chains",
                  "threads": "--threads", "nproc": "--nproc"}
#: Verbs whose -o is a directory (the others write one file).
_DIRECTORY_OUTPUTS = {"build", "reference", "analyze", "train", "train-dig", "calibrate", "simulate", "demo"}


def _check_arguments(args) -> None:
    """One-line errors for option values no verb can use, before any verb starts work."""
    import math

    for key, flag in _POSITIVE_FLOATS.items():
        value = getattr(args, key, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"{flag} must be a finite number > 0, got {value}")
    for key, flag in _POSITIVE_INTS.items():
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    fit_range = getattr(args, "fit_range", None)
    if fit_range is not None and not (0 < fit_range < 1):
        raise ValueError(f"--fit-range must be a fraction in (0, 1), got {fit_range}")
    output = getattr(args, "output", None)
    if output:
        if args.verb in _DIRECTORY_OUTPUTS and os.path.exists(output) and not os.path.isdir(output):
            raise ValueError(f"-o {output} is a file; give a directory")
        if args.verb not in _DIRECTORY_OUTPUTS and os.path.isdir(output):
            raise ValueError(f"-o {output} is a directory; give a file name")
    device = getattr(args, "device", None)
    if device is not None and device != "cpu":
        import torch

        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ValueError(f"--device {device} is not a torch device; use cpu or cuda") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this torch build ({torch.__version__}) sees no CUDA device; "
                             "use --device cpu")


def _is_blow_up(err: Exception) -> bool:
    # Only a verb that imported the simulate stage can raise SimulationBlowUp; don't import torch to find out.
    module = sys.modules.get("openmm_cgml.simulate.integrator")
    return module is not None and isinstance(err, module.SimulationBlowUp)


if __name__ == "__main__":
    sys.exit(main())

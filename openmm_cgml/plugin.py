"""The compiled OpenMM plugin (``plugin_kernels/``): the learned step in C++ through libtorch, no Python per step.

``CGMLIntegrator(step, seed)`` returns a native ``openmm.Integrator`` (a SWIG wrapper of the C++
``CGMLPlugin::CGMLIntegrator``) whose kernel runs the TorchScript-exported
:class:`~openmm_cgml.simulate.step.LearnedStep`, keeps the velocity history, step index and seed (all three in
Context checkpoints), and draws the noise of :func:`~openmm_cgml.simulate.step.step_noise`, so it gives the
trajectory of the Python :class:`~openmm_cgml.simulate.integrator.CGMLIntegrator` for the same seed. It runs on
every platform (positions go through ContextImpl); on CUDA with a CUDA torch the model runs on the Context's GPU
(``getDevice()``). Its CG System has no PythonForce (:func:`create_cg_system`).

The plugin is built against the installed torch and OpenMM by ``pip install -e .`` when torch is already
installed, otherwise on first use (a one-time CMake build into ``plugin_kernels/build/``, about a minute or
three); a torch or OpenMM upgrade triggers a rebuild. Where no compiler, CMake or SWIG exists,
:func:`is_available` is False and :func:`coarse_grain_simulation` with ``kernel="auto"`` uses the Python
integrator, saying so in one line.
"""
import hashlib
import importlib.util
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Optional

import openmm
import torch
from openmm import unit

from .simulate import coarse_grain_simulation as python_simulation
from .simulate.step import LearnedStep
from .simulate.integrator import displacement_bound
from .simulate.system import box_vectors_nm, create_bead_system

MODULE_NAME = "openmm_cgml_native"
_INSTALLED_DIR = Path(__file__).resolve().parent / "_native"  # setup.py copies a built plugin here (non-editable)
_SOURCE_DIR = Path(__file__).resolve().parents[1] / "plugin_kernels"  # the source tree (editable installs)
_native = None
_unavailable: Optional[str] = None


class PluginUnavailable(RuntimeError):
    """The compiled plugin is not built and cannot be built here; the message (one line) says why."""


def _build_helper():
    """``plugin_kernels/build.py`` as a module, or None when the sources are not next to the package."""
    path = _SOURCE_DIR / "build.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("openmm_cgml_plugin_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _module_dir(build: bool) -> Path:
    """Folder of a plugin built for this torch/OpenMM; builds it (once, with a one-line message) if allowed."""
    helper = _build_helper()
    try:
        return _find_or_build(helper, build)
    except Exception as err:
        if helper is not None and isinstance(err, helper.BuildError):
            raise PluginUnavailable(str(err)) from None
        raise


def _find_or_build(helper, build: bool) -> Path:
    if helper is None:
        if any(_INSTALLED_DIR.glob(f"_{MODULE_NAME}*.so")):
            return _INSTALLED_DIR
        raise PluginUnavailable("the compiled plugin was not built at install time and its sources are not "
                                "installed; reinstall with a C++ compiler, CMake and SWIG present")
    if helper.is_current():
        return helper.module_dir()
    if not build:
        raise PluginUnavailable("the compiled plugin is not built for this torch/OpenMM; run "
                                "`python plugin_kernels/build.py`")
    helper.toolchain()  # fails fast, before the message, when a tool is missing
    print(f"openmm-cgml: building the compiled plugin against torch {torch.__version__} (once, a few minutes; "
          f"log in {helper.BUILD_DIR / 'build.log'})", file=sys.stderr)
    return helper.build()


def native(build: bool = True):
    """The SWIG module of the plugin (building it on first use when ``build``); raises PluginUnavailable."""
    global _native, _unavailable
    if _native is not None:
        return _native
    if _unavailable is not None:
        raise PluginUnavailable(_unavailable)
    try:
        where = _module_dir(build)
        sys.path.insert(0, str(where))  # the SWIG proxy imports its extension module by its top-level name
        try:
            import openmm_cgml_native as module  # noqa: E402 (needs the path above)
        except (ImportError, OSError) as err:
            raise PluginUnavailable(f"the compiled plugin in {where} does not load ({str(err).splitlines()[0]}); "
                                    "rebuild it with `python plugin_kernels/build.py --force`") from None
        finally:
            sys.path.remove(str(where))
    except PluginUnavailable as err:
        if build:  # a later call may still build it when this one was not allowed to
            _unavailable = str(err)
        raise
    _native = module
    return module


def is_available(build: bool = True) -> bool:
    """True when the compiled integrator can be used (building it now if needed and ``build``)."""
    try:
        native(build)
    except PluginUnavailable:
        return False
    return True


def _atomic_save(module: torch.jit.ScriptModule, path: Path):
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt.tmp")
    os.close(fd)
    try:
        module.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _script(step) -> torch.jit.ScriptModule:
    if isinstance(step, torch.jit.ScriptModule):
        return step
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript; it is still the format libtorch loads with dynamic edge counts.
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(step.cpu())


def export_step(step, path) -> Path:
    """Write ``step`` (a :class:`LearnedStep` or its ``torch.jit.script``) as the TorchScript file the plugin loads.

    The file is a TorchScript archive (weights, code and the attributes ``n_beads``, ``history_length``,
    ``n_refine``, ``periodic``, ``timestep_ps``); it loads without unpickling Python objects.
    """
    if not isinstance(step, (LearnedStep, torch.jit.ScriptModule)):
        raise TypeError("export_step expects a LearnedStep (LearnedStep.from_model) or its torch.jit.script")
    if int(step.n_replicas) != 1:
        raise ValueError("the compiled integrator advances one replica; export a single-replica LearnedStep")
    scripted = _script(step)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(scripted, path)
    return path


def step_cache_dir() -> Path:
    """Where :func:`CGMLIntegrator` keeps exported steps given without a file: ``$CGML_CACHE`` or
    ``~/.cache/openmm_cgml/steps`` (files are named by content, so a serialized integrator finds its step)."""
    root = os.environ.get("CGML_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "openmm_cgml")
    return Path(root) / "steps"


def _cached_export(step) -> Path:
    scripted = _script(step)
    with tempfile.TemporaryDirectory() as tmp:
        staged = export_step(scripted, Path(tmp) / "step.pt")
        data = staged.read_bytes()
    path = step_cache_dir() / f"step-{hashlib.sha256(data).hexdigest()[:16]}.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(scripted, path)
    return path


def CGMLIntegrator(step, seed: int = 0, max_displacement=None, model_file=None):
    """The compiled learned integrator: a genuine ``openmm.Integrator`` for ``app.Simulation``.

    Args:
        step: a :class:`LearnedStep` (``LearnedStep.from_model``), its ``torch.jit.script``, or the path of a
            file written by :func:`export_step`.
        seed: seed of the random stream; the same seed gives the Python integrator's trajectory.
        max_displacement : length
            largest bead displacement in one step (nm or a Quantity; default ``displacement_bound``, scaled to
            the model's training data); a larger one, or a NaN, raises ``SimulationBlowUp`` from ``step()`` and
            the Context keeps the last good state.
        model_file: where to export ``step`` (default: a content-named file in :func:`step_cache_dir`).

    The System must have one particle per bead (:func:`create_cg_system`); any platform runs it.
    """
    module = native()
    scripted = step
    if isinstance(step, (str, os.PathLike)):
        path = Path(step)
        scripted = None
        if max_displacement is None and path.is_file():  # the default bound needs the model's velocity scale
            try:
                scripted = torch.jit.load(str(path))
            except RuntimeError:
                pass  # not a TorchScript archive: the plugin's own check says so in one line
    elif model_file is not None:
        path = export_step(step, model_file)
    else:
        path = _cached_export(step)
    max_displacement = displacement_bound(scripted, max_displacement)
    if not 0 <= int(seed) < 2**53:
        raise ValueError(f"seed must be an integer in [0, 2**53), got {seed}")
    try:
        return module.CGMLIntegrator(str(path), int(seed), float(max_displacement))
    except openmm.OpenMMException as err:
        raise ValueError(str(err)) from None


def deserialize_integrator(xml: str):
    """The compiled integrator saved by ``openmm.XmlSerializer.serialize`` (its step file must still exist).

    ``XmlSerializer.deserialize`` alone returns it typed as a plain ``openmm.Integrator`` (which Simulation
    accepts); this gives the ``CGMLIntegrator`` methods too.
    """
    module = native()
    integrator = openmm.XmlSerializer.deserialize(xml)
    if not isinstance(integrator, openmm.Integrator) or not module.CGMLIntegrator.isinstance(integrator):
        raise ValueError("the XML does not hold a compiled CGMLIntegrator") from None
    typed = module.CGMLIntegrator.cast(integrator)
    integrator.thisown, typed.thisown = False, True  # the typed proxy now owns (and deletes) the integrator
    return typed


def create_cg_system(beadmap, box_vectors=None) -> openmm.System:
    """A System of one particle per bead (bead masses, amu) for the compiled integrator: no PythonForce.

    Parameters
    ----------
    beadmap : BeadMap
        The bead system.
    box_vectors : length, optional
        Periodic box vectors (as for :func:`openmm_cgml.simulate.create_cg_system`); None when not periodic.
    """
    system = create_bead_system(beadmap, box_vectors)
    if box_vectors_nm(box_vectors) is not None:
        # A force-free System reports itself non-periodic and reporters then ignore the box; this empty force (no
        # particles, zero energy) marks the System periodic as the Python integrator's PythonForces do.
        marker = openmm.CustomExternalForce("0*periodicdistance(x, y, z, 0, 0, 0)")
        marker.setName("CGMLPeriodicMarker")
        system.addForce(marker)
    return system


def coarse_grain_simulation(topology, system, positions, model, box_vectors=None, seed: int = 0,
                            kernel: str = "auto", max_displacement=None, **options):
    """:func:`openmm_cgml.simulate.coarse_grain_simulation` with the choice of integrator.

    Parameters
    ----------
    kernel : str
        ``"compiled"`` (the plugin; an error if it is unavailable), ``"python"`` (the CustomIntegrator +
        PythonForce bridge), or ``"auto"`` (compiled when available, else Python with a one-line notice).
    max_displacement : length
        The blow-up bound of one step (a Quantity or nm), for either integrator.
    topology, system, positions, model, box_vectors, seed, **options
        As for :func:`openmm_cgml.simulate.coarse_grain_simulation`.

    Returns
    -------
    CGSimulationSetup
        ``topology``, ``system``, ``positions``, ``integrator``, ``beadmap``; with the compiled kernel the System
        has no PythonForce and the integrator is the plugin's.
    """
    if kernel not in ("auto", "compiled", "python"):
        raise ValueError(f"kernel must be 'auto', 'compiled' or 'python', got {kernel!r}")
    setup = python_simulation(topology, system, positions, model, box_vectors=box_vectors, seed=seed,
                              max_displacement=max_displacement, **options)
    if kernel == "python":
        return setup
    if kernel == "auto" and not is_available():
        print(f"openmm-cgml: using the Python integrator ({_unavailable})", file=sys.stderr)
        return setup
    integrator = CGMLIntegrator(setup.integrator.step_module, seed=seed, max_displacement=max_displacement)
    box = setup.topology.getPeriodicBoxVectors()
    return setup._replace(system=create_cg_system(setup.beadmap, box), integrator=integrator)

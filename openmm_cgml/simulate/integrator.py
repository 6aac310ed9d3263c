"""The learned CG step as an ordinary OpenMM integrator.

``CGMLIntegrator`` is a ``CustomIntegrator`` whose state lives entirely in places an OpenMM checkpoint saves:

* per-DOF variables ``xu`` (unwrapped bead positions, nm, as the last step wrote them) and ``h0 .. h{H-1}``
  (velocity history: displacement per model step, nm; ``h{H-1}`` most recent);
* the per-DOF variable ``seed`` (the random stream's seed, so a checkpoint loaded into an integrator made with
  another seed still continues the saved stream) and the Context's time, from which the step index (and with the
  seed, the step's random numbers) follows; the global variable ``step_index`` mirrors it for inspection.

Two ``PythonForce`` objects (:func:`create_cg_forces`, in two force groups chosen by the caller, 30 and 31 by
default) carry the torch step's results back into OpenMM: the first group's "forces" are the new positions, the
second's the new displacement. Both come from a single model call, cached on the exact bytes of the state it read.

The System is not bound to an integrator: the forces' callback is a stateless module-level object, and each
integrator writes its own id into the Context parameter ``cgml_integrator`` at the start of every step; the
callback looks the integrator up by that id. So one CG System serves any number of integrators, Contexts and
``Simulation`` objects, and it serialises (the callback pickles without the model). Outside a step (reporters,
``getState(getForces=True)``, ``minimizeEnergy``) the forces are zero and no model runs.

The callback never reads a *global* integrator variable: doing so from inside a step discards the step's global
updates in OpenMM 8.6 (measured), while per-DOF reads are safe. That is why flags the callback needs are copied
into per-DOF variables by the compute program.

What the usual OpenMM calls mean with this integrator (the README has the same table):

* ``context.setPositions(x)`` after the first step: the next step starts from ``x`` and the velocity history is
  reset to zero, as for a fresh start (the old history belongs to another configuration). Positions equal to the
  last written ones within ``POSITION_TOLERANCE_NM`` count as unchanged (``loadCheckpoint`` restores both).
  ``set_history`` after ``setPositions`` keeps the history it sets.
* Velocities: the learned model has none. The Context's velocities are kept at zero; velocities set by the user
  (``setVelocities``, ``setVelocitiesToTemperature``) are refused at the next step with a one-line ``ValueError``.
  So the kinetic energy, and a ``StateDataReporter``'s temperature, is 0: not available.
* Potential energy: 0 by construction (the model has no energy); ``minimizeEnergy()`` therefore leaves the
  positions unchanged. The score model's refinement inside every step already removes bead overlaps.
* A NaN or a displacement beyond ``max_displacement`` raises :class:`SimulationBlowUp`; the Context keeps the
  last good state, and the exception's ``state`` holds it as arrays (``np.savez(path, **err.state)`` writes the
  same ``last_good_state.npz`` the batched engine writes).
"""
import itertools
import weakref
from typing import Optional, Tuple

import numpy as np
import openmm
import torch
from openmm import unit

from .step import LearnedStep, step_noise

#: Force groups of the two PythonForces (new positions, new displacement) unless the caller picks others.
DEFAULT_FORCE_GROUPS = (30, 31)
#: Context parameter through which the forces' callback finds the integrator that is stepping the Context.
CONTEXT_PARAMETER = "cgml_integrator"
#: Context positions that differ from the integrator's last written ones by more than this (nm) were set by the user.
POSITION_TOLERANCE_NM = 1e-5

_INTEGRATORS: "weakref.WeakValueDictionary[int, CGMLIntegrator]" = weakref.WeakValueDictionary()
_NEXT_ID = itertools.count(1)


def _perdof(integrator, name: str) -> np.ndarray:
    return np.asarray(integrator.getPerDofVariableByName(name), dtype=np.float64).astype(np.float32)


def check_force_groups(force_groups) -> Tuple[int, int]:
    """Two distinct OpenMM force groups in 0..31, or a one-line ValueError."""
    try:
        groups = tuple(int(g) for g in force_groups)
    except (TypeError, ValueError):
        raise ValueError(f"force_groups must be two integers in 0..31, got {force_groups!r}") from None
    if len(groups) != 2 or groups[0] == groups[1] or not all(0 <= g <= 31 for g in groups):
        raise ValueError(f"force_groups must be two different OpenMM force groups in 0..31, got {force_groups!r}")
    return groups


class _StepForce:
    """The computation of one PythonForce: output 0 = new positions, 1 = new displacement (nm, as "forces").

    Stateless (so the System pickles and is shared): the integrator comes from the Context parameter.
    """

    def __init__(self, output: int):
        self.output = output

    def __call__(self, state):
        integrator = _INTEGRATORS.get(int(state.getParameters()[CONTEXT_PARAMETER]))
        if integrator is None or not integrator._in_step:
            # Reporters, getState(getForces=True), minimizeEnergy: no energy, no forces, no model call.
            return 0.0, np.zeros((state.getPositions(asNumpy=True).shape[0], 3))
        return 0.0, integrator._advance(state)[self.output]


def create_cg_forces(periodic: bool, force_groups=DEFAULT_FORCE_GROUPS):
    """The two PythonForces that deliver any CGMLIntegrator's step; add both to the CG System.

    Parameters
    ----------
    periodic : bool
        Whether the CG System is periodic (the callback then receives the box).
    force_groups : (int, int)
        Force groups of the position and displacement outputs; the integrator must use the same ones.
    """
    forces = []
    for output, group in enumerate(check_force_groups(force_groups)):
        force = openmm.PythonForce(_StepForce(output), {CONTEXT_PARAMETER: 0.0})
        force.setForceGroup(group)
        force.setUsesPeriodicBoundaryConditions(bool(periodic))
        forces.append(force)
    return forces


class CGMLIntegrator(openmm.CustomIntegrator):
    """Advances a coarse-grained system by one learned step (the model's time step, e.g. 100 ps) per step.

    Parameters
    ----------
    step : LearnedStep
        The learned step (eager or TorchScript) of this bead system.
    seed : int
        Seed of the step's random stream; with the same seed every wrapper gives the same trajectory.
    max_displacement : length, optional
        Largest physical bead displacement in one step (a Quantity, or a number in nm; default
        :func:`displacement_bound`); a larger one, or a NaN, stops the run with :class:`SimulationBlowUp` and the
        Context keeps the last good state.
    force_groups : (int, int)
        Force groups (0..31) of the System's CG forces (:func:`create_cg_forces` / ``create_cg_system`` with the
        same groups).

    The step size is the model's time step. See the module docstring for what ``setPositions``, velocities,
    energies and ``minimizeEnergy`` mean with this integrator.
    """

    def __init__(self, step: LearnedStep, seed: int = 0, max_displacement=None, force_groups=DEFAULT_FORCE_GROUPS):
        self.max_displacement_nm = displacement_bound(step, max_displacement)
        if not 0 <= int(seed) < 2**53:  # stored exactly in a double-precision per-DOF variable
            raise ValueError(f"seed must be an integer in [0, 2**53), got {seed}")
        self.force_groups = check_force_groups(force_groups)
        self.timestep_ps = float(step.timestep_ps)
        super().__init__(self.timestep_ps)
        self.step_module = step
        self.history_length = int(step.history_length)
        self.n_refine = int(step.n_refine)
        self.periodic = bool(step.periodic)
        self._id = next(_NEXT_ID)
        _INTEGRATORS[self._id] = self
        self._in_step = False
        self._calls = 0
        self._error: Optional[Exception] = None
        self._cache_key: Optional[bytes] = None
        self._cache_value = None
        self._build_program(int(seed))

    def _build_program(self, seed: int):
        hl = self.history_length
        position_group, displacement_group = self.force_groups
        self.addGlobalVariable("step_index", 0.0)
        self.addGlobalVariable("velocities_set", 0.0)
        self.addGlobalVariable("positions_set", 0.0)
        self.addPerDofVariable("seed", float(seed))
        self.addPerDofVariable("started", 0.0)
        self.addPerDofVariable("refused", 0.0)
        self.addPerDofVariable("xu", 0.0)
        self.addPerDofVariable("dnew", 0.0)
        for k in range(hl):
            self.addPerDofVariable(f"h{k}", 0.0)
        self.addComputeGlobal(CONTEXT_PARAMETER, str(self._id))  # tells the forces' callback who is stepping
        # Velocities are not part of the learned model: any set by the user are refused (by the callback).
        self.addComputeSum("velocities_set", "v*v")
        self.addComputePerDof("refused", "velocities_set")
        self.addComputePerDof("v", "0")
        # setPositions after the first step: start from the new positions with a zeroed velocity history.
        self.addComputeSum("positions_set", f"started*step(abs(x - xu) - {POSITION_TOLERANCE_NM})")
        for k in range(hl):
            self.addComputePerDof(f"h{k}", f"select(positions_set, 0, h{k})")
        self.addComputePerDof("xu", "select(positions_set, x, select(started, xu, x))")
        self.addComputePerDof("started", "1")
        self.addComputePerDof("dnew", f"f{displacement_group}")
        self.addComputePerDof("x", f"f{position_group}")
        self.addComputePerDof("xu", "x")
        for k in range(hl - 1):
            self.addComputePerDof(f"h{k}", f"h{k + 1}")
        self.addComputePerDof(f"h{hl - 1}", "dnew")
        self.addComputeGlobal("step_index", "step_index + 1")

    def step(self, steps):
        """Advance ``steps`` learned steps.

        Raises
        ------
        SimulationBlowUp
            A NaN or an unphysical displacement; the Context keeps the last good state (also in ``err.state``).
        ValueError
            Velocities were set on the Context, or the System lacks the CG forces in this integrator's groups.
        """
        self._in_step, self._calls, self._error = True, 0, None
        try:
            result = super().step(steps)
        except openmm.OpenMMException:
            if self._error is not None:
                err, self._error = self._error, None
                raise err from None
            raise
        finally:
            self._in_step = False
        if steps > 0 and self._calls == 0:
            raise ValueError(f"the learned step did not run: the System has no CG forces in force groups "
                             f"{self.force_groups}; build it with create_cg_system(..., force_groups="
                             f"integrator.force_groups)")
        return result

    def create_forces(self):
        """The two PythonForces for this integrator's force groups (same as :func:`create_cg_forces`)."""
        return create_cg_forces(self.periodic, self.force_groups)

    @property
    def seed(self) -> int:
        """Seed of the step's random stream (restored by ``loadCheckpoint`` with the rest of the state)."""
        return int(self.getPerDofVariableByName("seed")[0][0])

    def set_history(self, history):
        """Set the velocity history, (H, N, 3) displacements per model step in nm (``h[-1]`` most recent).

        Call after the Context exists (e.g. ``simulation.integrator.set_history(h)``); the next step starts from
        the Context's positions with this history (also right after a ``setPositions``).
        """
        history = np.asarray(history, dtype=np.float64)
        if history.ndim != 3 or history.shape[0] != self.history_length or history.shape[2] != 3:
            raise ValueError(f"history must have shape ({self.history_length}, n_beads, 3), got {history.shape}")
        if not np.isfinite(history).all():
            raise ValueError("history contains NaN or inf")
        for k in range(self.history_length):
            self.setPerDofVariableByName(f"h{k}", [openmm.Vec3(*row) for row in history[k].astype(np.float32)])
        n = history.shape[1]
        self.setPerDofVariableByName("started", [openmm.Vec3(0.0, 0.0, 0.0)] * n)

    def get_history(self) -> np.ndarray:
        """The current velocity history, (H, N, 3) nm per model step."""
        return np.stack([_perdof(self, f"h{k}") for k in range(self.history_length)])

    def _fail(self, err: Exception) -> Exception:
        self._error = err  # OpenMM wraps callback exceptions; step() re-raises this one
        return err

    def _advance(self, state):
        self._calls += 1
        if self.getPerDofVariableByName("refused")[0][0]:
            raise self._fail(ValueError(
                "CGMLIntegrator: velocities were set on the Context (e.g. setVelocitiesToTemperature), but the "
                "learned model has no velocities; remove that call (set a velocity history with "
                "integrator.set_history)"))
        x = _perdof(self, "xu")
        history = self.get_history()
        step_index = int(round(state.getTime().value_in_unit(unit.picosecond) / self.timestep_ps))
        seed = self.seed
        if self.periodic:
            box = np.diag(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)).astype(np.float32)
        else:
            box = np.zeros(0, dtype=np.float32)
        key = b"".join([x.tobytes(), history.tobytes(), box.tobytes(), np.int64([seed, step_index]).tobytes()])
        if key != self._cache_key:
            try:
                x_new, h_new = run_step(self.step_module, x, history, box, seed, step_index)
                check_step(x_new, h_new[-1], step_index, self.max_displacement_nm)
            except SimulationBlowUp as err:
                err.state = {"positions": x, "history": history, "step_index": step_index, "seeds": np.asarray([seed]),
                             "boxes": box.reshape(-1, 3), "timestep_ps": self.timestep_ps}
                raise self._fail(err)
            self._cache_key = key
            self._cache_value = (x_new.astype(np.float64), h_new[-1].astype(np.float64))
        return self._cache_value


class SimulationBlowUp(RuntimeError):
    """The learned step produced NaN or an unphysical displacement; the run keeps the last good state.

    ``state`` (when set) is a dict of arrays describing that state: ``positions`` (nm), ``history`` (nm per
    step), ``step_index``, ``seeds``, ``boxes`` (nm) and ``timestep_ps`` (ps).
    """

    state: Optional[dict] = None


def run_step(step, x: np.ndarray, history: np.ndarray, box: np.ndarray, seed: int, step_index: int):
    """One learned step of state arrays (float32 nm) on the CPU with ``step_noise(seed, step_index)``.

    Non-finite inputs, or a model that fails inside the step (e.g. on NaN positions produced by its own
    dynamics), raise :class:`SimulationBlowUp` instead of an error from deep inside graph building.
    """
    if not (np.isfinite(x).all() and np.isfinite(history).all()):
        raise SimulationBlowUp(f"learned step {step_index}: the positions or velocity history entering the step "
                               "are not finite (set with setPositions/set_history?)")
    dyn_noise, refine_noise = step_noise(seed, step_index, x.shape[0], int(step.n_refine))
    with torch.no_grad():
        try:
            x_new, h_new = step(torch.from_numpy(x), torch.from_numpy(history), torch.from_numpy(box), dyn_noise,
                                refine_noise)
        except RuntimeError as err:
            raise SimulationBlowUp(f"learned step {step_index}: the model failed inside the step "
                                   f"({str(err).splitlines()[0]}); last good state kept") from None
    return x_new.numpy(), h_new.numpy()


#: Default blow-up bound in units of the model's ``velocity_scale`` (per-coordinate RMS one-step displacement of
#: its training data), and never below :data:`MIN_BLOW_UP_NM`. All-atom data themselves move a bead up to 7-9
#: velocity scales in one 100-ps step (largest moves in the PEO/LiTFSI campaign references), more on a hotter or
#: shorter-chain system than the model was trained on; a runaway step grows geometrically, so a generous bound
#: still stops it within a step or two.
BLOW_UP_VELOCITY_SCALES = 20.0
MIN_BLOW_UP_NM = 2.0


def displacement_bound(step, max_displacement=None) -> float:
    """Blow-up bound of one step, nm: ``max_displacement`` (a Quantity or nm) or, when None, the larger of
    :data:`MIN_BLOW_UP_NM` and :data:`BLOW_UP_VELOCITY_SCALES` times the velocity scale of ``step`` (a
    :class:`LearnedStep` or its script; without one, the floor)."""
    if max_displacement is None:
        scale = getattr(getattr(step, "dynamics", None), "velocity_scale", None)
        return MIN_BLOW_UP_NM if scale is None else max(MIN_BLOW_UP_NM, BLOW_UP_VELOCITY_SCALES * float(scale))
    if unit.is_quantity(max_displacement):
        max_displacement = max_displacement.value_in_unit(unit.nanometer)
    bound = float(max_displacement)
    if not bound > 0:
        raise ValueError(f"max_displacement must be a positive length in nm, got {max_displacement}")
    return bound


def check_step(x_new: np.ndarray, moved: np.ndarray, step_index: int, max_displacement_nm: float):
    """Raise :class:`SimulationBlowUp` if a bead position is NaN/inf or its displacement this step ``moved`` (the
    newest history row: it leaves out whole-box relabelling of molecules) is longer than ``max_displacement_nm``."""
    if not np.isfinite(x_new).all():
        bad = int(np.argwhere(~np.isfinite(x_new).all(axis=1))[0, 0])
        raise SimulationBlowUp(f"learned step {step_index}: bead {bad} position is not finite; last good state kept")
    distance = np.linalg.norm(moved, axis=1)
    worst = int(np.argmax(distance))
    if distance[worst] > max_displacement_nm:
        raise SimulationBlowUp(
            f"learned step {step_index}: bead {worst} moved {distance[worst]:.2f} nm (> {max_displacement_nm} nm bound);"
            " last good state kept"
        )

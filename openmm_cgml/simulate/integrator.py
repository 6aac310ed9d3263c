"""The learned CG step as an ordinary OpenMM integrator.

``CGMLIntegrator`` is a ``CustomIntegrator`` whose state lives entirely in places an OpenMM checkpoint saves:

* per-DOF variables ``xu`` (unwrapped bead positions, nm) and ``h0 .. h{H-1}`` (velocity history: displacement
  per model step, nm; ``h{H-1}`` most recent);
* the per-DOF variable ``seed`` (the random stream's seed, so a checkpoint loaded into an integrator made with
  another seed still continues the saved stream) and the Context's time, from which the step index (and with the
  seed, the step's random numbers) follows; the global variable ``step_index`` mirrors it for inspection.

The callback never reads a *global* integrator variable: doing so from inside a step discards the step's global
updates in OpenMM 8.6 (measured), while per-DOF reads are safe.

Two ``PythonForce`` objects (force groups 30 and 31) carry the torch step's results back into OpenMM: group 30
"forces" are the new positions and group 31 "forces" the new displacement. Both come from a single model call,
cached on the exact bytes of the state it read. A PythonForce cannot see velocities, and the State it receives may
hold wrapped positions, so the callback reads ``xu`` and the history from the integrator instead; that is why
``saveCheckpoint``/``loadCheckpoint`` resume bit-exactly. The reported "energy" of these forces is zero: the
learned model has no potential energy.
"""
from typing import Optional

import numpy as np
import openmm
import torch
from openmm import unit

from .step import LearnedStep, step_noise

POSITION_GROUP = 30
DISPLACEMENT_GROUP = 31


def _perdof(integrator, name: str) -> np.ndarray:
    return np.asarray(integrator.getPerDofVariableByName(name), dtype=np.float64).astype(np.float32)


class _StepCallback:
    """Runs the torch step for a PythonForce; one model call serves both force groups and any re-evaluation."""

    def __init__(self, integrator: "CGMLIntegrator", output: int):
        self.integrator = integrator
        self.output = output  # 0: new positions, 1: new displacement

    def __call__(self, state):
        result = self.integrator._advance(state)
        return 0.0, result[self.output]


class CGMLIntegrator(openmm.CustomIntegrator):
    """Advances a coarse-grained system by one learned step (the model's time step, e.g. 100 ps) per step.

    Args:
        step: a :class:`~openmm_cgml.simulate.step.LearnedStep` (eager or TorchScript) for this bead system.
        seed: seed of the step's random stream; with the same seed every wrapper gives the same trajectory.
        max_displacement: largest physical bead displacement in one step (nm or a length Quantity); a larger
            one, or a NaN, stops the run with :class:`SimulationBlowUp` and the Context keeps the last good state.

    Add :meth:`create_forces` to the CG System (``create_cg_system`` does it) before making the Context.
    """

    def __init__(self, step: LearnedStep, seed: int = 0, max_displacement=2.0):
        self.max_displacement_nm = (
            max_displacement.value_in_unit(unit.nanometer) if unit.is_quantity(max_displacement) else float(max_displacement)
        )
        self.timestep_ps = float(step.timestep_ps)
        super().__init__(self.timestep_ps)
        self.step_module = step
        self.history_length = int(step.history_length)
        self.n_refine = int(step.n_refine)
        self.periodic = bool(step.periodic)
        self.addGlobalVariable("step_index", 0.0)
        if not 0 <= int(seed) < 2**53:  # stored exactly in a double-precision per-DOF variable
            raise ValueError(f"seed must be an integer in [0, 2**53), got {seed}")
        self.addPerDofVariable("seed", float(int(seed)))
        self.addPerDofVariable("started", 0.0)
        self.addPerDofVariable("xu", 0.0)
        self.addPerDofVariable("dnew", 0.0)
        for k in range(self.history_length):
            self.addPerDofVariable(f"h{k}", 0.0)
        # The first step adopts the Context's positions as the unwrapped state.
        self.addComputePerDof("xu", "select(started, xu, x)")
        self.addComputePerDof("started", "1")
        self.addComputePerDof("dnew", f"f{DISPLACEMENT_GROUP}")
        self.addComputePerDof("x", f"f{POSITION_GROUP}")
        self.addComputePerDof("xu", "x")
        for k in range(self.history_length - 1):
            self.addComputePerDof(f"h{k}", f"h{k + 1}")
        self.addComputePerDof(f"h{self.history_length - 1}", "dnew")
        self.addComputePerDof("v", "dnew/dt")
        self.addComputeGlobal("step_index", "step_index + 1")
        self._cache_key: Optional[bytes] = None
        self._blow_up: Optional[Exception] = None
        self._cache_value = None

    def step(self, steps):
        """Advance ``steps`` learned steps; a NaN or blow-up raises :class:`SimulationBlowUp` (last good state kept)."""
        try:
            return super().step(steps)
        except openmm.OpenMMException:
            if self._blow_up is not None:
                err, self._blow_up = self._blow_up, None
                raise err from None
            raise

    def create_forces(self):
        """The two PythonForces that deliver the step's results; add both to the CG System."""
        forces = []
        for output, group in ((0, POSITION_GROUP), (1, DISPLACEMENT_GROUP)):
            force = openmm.PythonForce(_StepCallback(self, output))
            force.setForceGroup(group)
            force.setUsesPeriodicBoundaryConditions(self.periodic)
            forces.append(force)
        return forces

    @property
    def seed(self) -> int:
        """Seed of the step's random stream (restored by ``loadCheckpoint`` with the rest of the state)."""
        return int(self.getPerDofVariableByName("seed")[0][0])

    def set_history(self, history):
        """Set the velocity history, (H, N, 3) displacements per model step in nm (``h[-1]`` most recent).

        Call after the Context exists (e.g. ``simulation.integrator.set_history(h)``).
        """
        history = np.asarray(history, dtype=np.float64)
        if history.shape[0] != self.history_length or history.ndim != 3 or history.shape[2] != 3:
            raise ValueError(f"history must have shape ({self.history_length}, n_beads, 3), got {history.shape}")
        if not np.isfinite(history).all():
            raise ValueError("history contains NaN or inf")
        for k in range(self.history_length):
            self.setPerDofVariableByName(f"h{k}", [openmm.Vec3(*row) for row in history[k].astype(np.float32)])

    def get_history(self) -> np.ndarray:
        """The current velocity history, (H, N, 3) nm per model step."""
        return np.stack([_perdof(self, f"h{k}") for k in range(self.history_length)])

    def _advance(self, state):
        started = self.getPerDofVariableByName("started")[0][0]
        if started:
            x = _perdof(self, "xu")
        else:
            x = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).astype(np.float32)
        history = self.get_history()
        step_index = int(round(state.getTime().value_in_unit(unit.picosecond) / self.timestep_ps))
        seed = self.seed
        if self.periodic:
            box = np.diag(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)).astype(np.float32)
        else:
            box = np.zeros(0, dtype=np.float32)
        key = b"".join([x.tobytes(), history.tobytes(), box.tobytes(), np.int64([seed, step_index]).tobytes()])
        if key != self._cache_key:
            dyn_noise, refine_noise = step_noise(seed, step_index, x.shape[0], self.n_refine)
            with torch.no_grad():
                x_new, h_new = self.step_module(
                    torch.from_numpy(x), torch.from_numpy(history), torch.from_numpy(box), dyn_noise, refine_noise
                )
            x_new = x_new.numpy().astype(np.float64)
            d_new = h_new[-1].numpy().astype(np.float64)
            try:
                check_step(x, x_new, step_index, self.max_displacement_nm)
            except SimulationBlowUp as err:
                self._blow_up = err  # OpenMM wraps callback exceptions; step() re-raises this one
                raise
            self._cache_key, self._cache_value = key, (x_new, d_new)
        return self._cache_value


class SimulationBlowUp(RuntimeError):
    """The learned step produced NaN or an unphysical displacement; the Context still holds the last good state."""


def check_step(x_old: np.ndarray, x_new: np.ndarray, step_index: int, max_displacement_nm: float):
    """Raise :class:`SimulationBlowUp` if a bead position is NaN/inf or moved more than ``max_displacement_nm``."""
    if not np.isfinite(x_new).all():
        bad = int(np.argwhere(~np.isfinite(x_new).all(axis=1))[0, 0])
        raise SimulationBlowUp(f"learned step {step_index}: bead {bad} position is not finite; last good state kept")
    moved = np.linalg.norm(x_new - x_old, axis=1)
    worst = int(np.argmax(moved))
    if moved[worst] > max_displacement_nm:
        raise SimulationBlowUp(
            f"learned step {step_index}: bead {worst} moved {moved[worst]:.2f} nm (> {max_displacement_nm} nm bound);"
            " last good state kept"
        )

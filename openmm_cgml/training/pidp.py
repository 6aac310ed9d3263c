"""PIDP: physics-informed diffusion pre-training of DiG from an energy function alone (no equilibrium samples).

The score s(y, t) of the VP SDE's marginal p_t (dimensionless y = x / length_scale, see :mod:`openmm_cgml.nn.sde`)
must satisfy two conditions that involve only the energy E(x):

* at a small time t_b (marginal std ``boundary_sigma``) it is the Boltzmann score carried by the SDE's
  contraction, s(sqrt(ab) y0, t_b) = s_0(y0) / sqrt(ab) + O(sigma_b^2), with s_0 = -length_scale grad_x E / kT;
* at every time it obeys the score form of the Fokker–Planck equation of dy = -1/2 beta y dt + sqrt(beta) dW,

      d s / d t = 1/2 beta(t) grad_y [ y . s + div_y s + |s|^2 ],

  (the gradient of the log-density equation d log p / dt = 1/2 beta (d + y . s + div s + |s|^2)).

PIDP minimises both residuals at collocation points that need not be equilibrium structures: user-supplied
structures perturbed by Gaussian noise (for the boundary term) and those forward-diffused to random times (for the
Fokker–Planck term). d s / d t is exact (forward-mode autodiff in t); div s is a Hutchinson estimate with
Rademacher probes, so the residual costs a few backward passes whatever the system size. An extra, essentially
exact terminal condition s(y, 1) = -y / (alpha_bar(1) v + 1 - alpha_bar(1)) ~ -y anchors the prior end.
For non-periodic systems everything lives in the centroid-free subspace, as in the DSM trainer.

Energies: any differentiable ``energy(x) -> (B,)`` on x (B, N, 3) nm, in kJ/mol together with ``kT`` in kJ/mol, or
already in units of kT (kT = 1). :class:`OpenMMEnergy` wraps an OpenMM System (energy and forces from OpenMM).
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from ..nn.dig_model import Descriptor, DiGScoreModel, GraphScore, helmert_basis, subspace_rademacher
from ..nn.sde import VPSDE
from ..pbc import remove_centroid
from .dig import DiGConfig, descriptor_to_dict, save_dig_model
from .loop import TrainingLoop, array_digest, prepare_run_dir
from .schema import check

Energy = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PIDPConfig(DiGConfig):
    """DiG network/SDE/optimiser settings (see :class:`DiGConfig`) plus the PIDP loss settings.

    ``length_scale`` (nm) should be given: the typical size of a centred coordinate of the target distribution;
    by default it is the RMS centred coordinate of the start structures.
    """

    time_max_freq: float = 30.0  # smooth time features: the Fokker–Planck residual differentiates in t
    gaussian_skip: bool = True  # start from the exact N(0, I) solution of the Fokker–Planck equation
    n_iterations: int = 5000  # PIDP converges slowly (a physics-informed residual): train long
    grad_clip: float = 10.0
    kT: float = 1.0  # thermal energy in the energy function's unit (kJ/mol: 2.494 at 300 K; 1 if E is in kT)
    boundary_sigma: float = 0.05  # marginal std (diffusion units) at which the Boltzmann score is imposed
    boundary_weight: float = 1.0  # || s(y, t_b) - s_0(y / sqrt(alpha_bar)) / sqrt(alpha_bar) ||^2, relative
    fpe_weight: float = 1.0  # Fokker–Planck residual on [t_b, 1]
    fpe_weighting: str = "sigma2"  # residual^2 times sigma(t)^2 (damps the stiff small times), or "none"
    prior_weight: float = 0.1  # terminal condition at t = 1
    n_probes: int = 1  # Rademacher probes per collocation point for div s; 0: exact divergence
    perturb: float = 0.05  # nm, std of the Gaussian perturbation of start structures (boundary points)
    fpe_batch_size: Optional[int] = None  # collocation points per iteration for the FPE term (default batch_size)

    config_label = "PIDP"

    def validate(self):
        super().validate()
        check(self.fpe_weighting in ("none", "sigma2"),
              f"fpe_weighting must be 'none' or 'sigma2', got {self.fpe_weighting!r}")
        check(self.kT > 0, f"kT must be positive (in the energy's unit), got {self.kT}")
        check(0 < self.boundary_sigma < 1, f"boundary_sigma must lie in (0, 1), got {self.boundary_sigma}")
        weights = (self.boundary_weight, self.fpe_weight, self.prior_weight)
        check(min(weights) >= 0 and sum(weights) > 0, "boundary_weight, fpe_weight and prior_weight must be >= 0 "
              "and not all 0")
        check(self.n_probes >= 0, f"n_probes must be >= 0 (0: exact divergence), got {self.n_probes}")
        check(self.perturb >= 0, f"perturb must be >= 0 nm, got {self.perturb}")
        check(self.fpe_batch_size is None or self.fpe_batch_size >= 1,
              f"fpe_batch_size must be >= 1, got {self.fpe_batch_size}")


class PIDPObjective:
    """The PIDP loss (:func:`pidp_loss`) for :class:`~openmm_cgml.training.loop.TrainingLoop`; reports the total
    and its boundary, Fokker–Planck and prior terms (0 for a term whose weight is 0)."""

    names = ("loss", "boundary", "fpe", "prior")

    def __init__(self, sde: VPSDE, energy: "Energy", starts: torch.Tensor, descriptor: Descriptor,
                 config: "PIDPConfig", length_scale: float, device):
        self.sde, self.energy, self.starts, self.descriptor = sde, energy, starts, descriptor
        self.config, self.length_scale, self.device = config, float(length_scale), torch.device(device)

    def loss(self, model: DiGScoreModel, generator: torch.Generator):
        total, parts = pidp_loss(model, self.sde, self.energy, self.starts, self.descriptor, self.config,
                                 self.length_scale, generator, self.device)
        return total, (float(total.detach()),) + tuple(parts.get(k, 0.0) for k in self.names[1:])


def _centre(y: torch.Tensor, remove_com: bool) -> torch.Tensor:
    return remove_centroid(y) if remove_com else y


def boltzmann_score(energy: Energy, x: torch.Tensor, kT: float, length_scale: float) -> torch.Tensor:
    """-length_scale * grad_x E(x) / kT for structures x (B, N, 3) nm: the t = 0 score in y units."""
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        e = energy(xx)
        if e.shape != (x.shape[0],):
            raise ValueError(f"energy(x) must return one value per structure, shape ({x.shape[0]},), got "
                             f"{tuple(e.shape)}")
        (g,) = torch.autograd.grad(e.sum(), xx)
    return (-length_scale / kT) * g.detach()


def fokker_planck_residual(score: GraphScore, sde: VPSDE, y: torch.Tensor, t: torch.Tensor, n_probes: int,
                           remove_com: bool, generator: torch.Generator) -> torch.Tensor:
    """Residual d s/dt / beta - 1/2 grad_y [y.s + div s + |s|^2] at (y, t), (B, N, 3), differentiable in the
    model's parameters. d s/dt by forward-mode autodiff; div s by Hutchinson with ``n_probes`` Rademacher probes, or
    exactly with ``n_probes=0`` (small systems: squaring a noisy residual adds the estimator's variance to the loss)."""
    y = y.detach().requires_grad_(True)
    with fwAD.dual_level():
        t_dual = fwAD.make_dual(t, torch.ones_like(t))
        s_dual = score(y, t_dual)
        s, ds_dt = fwAD.unpack_dual(s_dual)
    s = _centre(s, remove_com)
    ds_dt = _centre(ds_dt, remove_com)
    div = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    if n_probes > 0:
        probes, weight = subspace_rademacher(int(n_probes), y.shape, remove_com, generator), 1.0 / n_probes
    else:  # exact: trace over an orthonormal basis of the diffusion space (N*3 or (N-1)*3 backward passes)
        probes, weight = space_basis(y.shape[1], remove_com).unsqueeze(1), 1.0
    for v in probes.to(y):
        (jv,) = torch.autograd.grad((s * v).sum(), y, create_graph=True)
        div = div + weight * (jv * v).sum(dim=(1, 2))
    f = (y * s).sum(dim=(1, 2)) + div + (s * s).sum(dim=(1, 2))
    (grad_f,) = torch.autograd.grad(f.sum(), y, create_graph=True)
    beta = sde.beta(t).view(-1, 1, 1)
    return ds_dt / beta - 0.5 * _centre(grad_f, remove_com)


def space_basis(n_beads: int, remove_com: bool) -> torch.Tensor:
    """Orthonormal basis (K, N, 3) of the space the diffusion lives in: all of R^(N x 3), or its centroid-free
    subspace (Helmert contrasts per Cartesian component) for non-periodic systems."""
    h = helmert_basis(n_beads) if remove_com else torch.eye(n_beads, dtype=torch.float64)
    basis = torch.zeros(h.shape[1], 3, n_beads, 3, dtype=torch.float64)
    for c in range(3):
        basis[:, c, :, c] = h.t()
    return basis.reshape(-1, n_beads, 3)


def boundary_time(sde: VPSDE, sigma: float) -> float:
    """The diffusion time at which the marginal std sqrt(1 - alpha_bar) equals ``sigma`` (bisection)."""
    if not 0.0 < sigma < 1.0:
        raise ValueError(f"boundary_sigma must lie in (0, 1), got {sigma}")
    target = -math.log1p(-sigma * sigma)  # integrated beta at that time
    lo, hi = 0.0, 1.0
    if float(sde.integrated_beta(torch.tensor(hi, dtype=torch.float64))) < target:
        raise ValueError(f"the SDE never reaches std {sigma}; lower boundary_sigma")
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if float(sde.integrated_beta(torch.tensor(mid, dtype=torch.float64))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def pidp_loss(
    model: DiGScoreModel,
    sde: VPSDE,
    energy: Energy,
    starts: torch.Tensor,
    descriptor: Descriptor,
    config: PIDPConfig,
    length_scale: float,
    generator: torch.Generator,
    device=torch.device("cpu"),
) -> Tuple[torch.Tensor, dict]:
    """One PIDP loss evaluation; returns (total, {"boundary", "fpe", "prior"} floats).

    ``starts`` (S, N, 3) nm are the structures collocation points are drawn around.
    """
    remove_com = not descriptor.periodic
    # The bead-type embedding stays as initialised (or pre-trained): one system's energy says nothing about types,
    # and its gradient through the Fokker-Planck residual made training unstable (harmonic dimer <r^2>: 0.049-0.079
    # nm^2 learned, 0.021-0.029 frozen; exact 0.030).
    score = GraphScore(model, sde, descriptor, device)
    n = descriptor.n_beads
    parts = {}
    total = torch.zeros((), device=device)

    def draw(count):
        idx = torch.randint(0, starts.shape[0], (count,), generator=generator)
        x = starts[idx] + config.perturb * torch.randn((count, n, 3), generator=generator)
        return _centre(x, remove_com).to(device)

    b = int(config.batch_size)
    t_b = boundary_time(sde, config.boundary_sigma)
    root_ab = float(sde.marginal_mean_coef(torch.tensor(t_b, dtype=torch.float64)))
    if config.boundary_weight > 0:
        x = draw(b)
        # p_t(y) = p_0(y / sqrt(ab)) convolved with a Gaussian of std sigma_b: to first order in sigma_b^2 its
        # score at y = sqrt(ab) y0 is s_0(y0) / sqrt(ab).
        target = _centre(boltzmann_score(energy, x, config.kT, length_scale), remove_com) / root_ab
        t = torch.full((b,), t_b, device=device)
        s = _centre(score(root_ab * x / length_scale, t), remove_com)
        # relative error: scale-free whatever the stiffness of the energy
        loss_b = ((s - target) ** 2).mean() / (target**2).mean().clamp(min=1e-8)
        parts["boundary"] = float(loss_b.detach())
        total = total + config.boundary_weight * loss_b
    if config.fpe_weight > 0:
        bf = int(config.fpe_batch_size or b)
        y0 = draw(bf) / length_scale
        t = (t_b + (1.0 - t_b) * torch.rand(bf, generator=generator)).to(device)
        noise = _centre(torch.randn((bf, n, 3), generator=generator).to(device), remove_com)
        tt = t.view(-1, 1, 1)
        y_t = sde.marginal_mean_coef(tt) * y0 + sde.marginal_std(tt) * noise
        res = fokker_planck_residual(score, sde, y_t, t, config.n_probes, remove_com, generator)
        if config.fpe_weighting == "sigma2":
            res = sde.marginal_std(tt) * res
        loss_f = (res**2).mean()
        parts["fpe"] = float(loss_f.detach())
        total = total + config.fpe_weight * loss_f
    if config.prior_weight > 0:
        # at t = 1 the marginal is N(0, I) up to alpha_bar(1) (~1e-4 for the default schedules)
        y1 = _centre(torch.randn((b, n, 3), generator=generator).to(device), remove_com)
        t1 = torch.ones(b, device=device)
        s1 = _centre(score(y1, t1), remove_com)
        loss_p = ((s1 + y1) ** 2).mean()
        parts["prior"] = float(loss_p.detach())
        total = total + config.prior_weight * loss_p
    return total, parts


def train_pidp(
    energy: Energy,
    start_structures,
    descriptor: Descriptor,
    config: Optional[PIDPConfig] = None,
    out_dir: Optional[str] = None,
    device: Union[str, torch.device] = "cpu",
    resume: bool = False,
    progress: bool = True,
    callback: Optional[Callable[[int, float], None]] = None,
) -> Tuple[DiGScoreModel, VPSDE]:
    """Train a DiG score model from ``energy`` alone; returns (EMA model, sde). No equilibrium data needed.

    Args:
        energy: differentiable ``energy(x (B, N, 3) nm) -> (B,)`` in the unit of ``config.kT``
            (e.g. :class:`OpenMMEnergy`).
        start_structures: (S, N, 3) nm structures (any, e.g. minimised, random or perturbed) around which the
            boundary and Fokker–Planck collocation points are drawn.
        descriptor: the system's :class:`Descriptor` (bead types, CG bonds, box).
        out_dir: checkpoints, config.yaml and the final model (kind "cgml-dig", loadable by ``load_dig`` and
            ``DiGSampler``); resumable exactly like the DSM trainer.
    """
    config = PIDPConfig.coerce(config)
    starts = torch.as_tensor(np.asarray(start_structures, dtype=np.float32))
    if starts.dim() == 2:
        starts = starts.unsqueeze(0)
    if starts.dim() != 3 or starts.shape[1:] != (descriptor.n_beads, 3):
        raise ValueError(f"start structures must be (S, {descriptor.n_beads}, 3) nm, got {tuple(starts.shape)}")
    if not descriptor.periodic:
        starts = remove_centroid(starts)
    device = torch.device(device)
    length = config.length_scale
    if length is None:
        length = max(float(torch.sqrt((starts**2).mean())), 1e-3)
    sde = config.make_sde()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config.seed))
        model = config.make_model(length)
    # the energy function itself cannot be fingerprinted; the start structures and the system can
    fingerprint = {"n_beads": descriptor.n_beads, "bead_types": descriptor.bead_types.tolist(),
                   "n_starts": int(starts.shape[0]), "starts_sha256": array_digest(starts.numpy())}
    has_ckpt = prepare_run_dir(out_dir, config, resume, fingerprint)
    objective = PIDPObjective(sde, energy, starts, descriptor, config, length, device)
    loop = TrainingLoop(model, config, objective, out_dir, device, desc="DiG PIDP")
    loop.run(resume=has_ckpt, progress=progress,
             callback=None if callback is None else (lambda i, terms: callback(i, terms[0])))
    save_dig_model(loop, sde, [descriptor], {"method": "pidp", "systems": [descriptor_to_dict(descriptor)]})
    model = loop.model
    model.load_state_dict(loop.final_state_dict())
    return model.eval(), sde


# ---------------------------------------------------------------------------------------------------- OpenMM
class _OpenMMEnergyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, adapter):
        energies, forces = adapter.evaluate(x.detach().cpu().double().numpy())
        ctx.save_for_backward(torch.as_tensor(forces, dtype=x.dtype, device=x.device))
        return torch.as_tensor(energies, dtype=x.dtype, device=x.device)

    @staticmethod
    def backward(ctx, grad_out):
        (forces,) = ctx.saved_tensors
        return -forces * grad_out.view(-1, 1, 1), None


class OpenMMEnergy:
    """A (CG) OpenMM System's potential energy as a differentiable torch function of positions.

    ``OpenMMEnergy(system)(x)`` takes x (B, N, 3) or (N, 3) nm and returns (B,) energies in kJ/mol, or in kT when
    ``temperature`` is given; gradients come from OpenMM's forces (first order only). Runs a private Context on
    the given platform (Reference by default; CPU for larger systems). ``box`` (3,) nm sets a fixed periodic box.
    """

    def __init__(self, system, platform: str = "Reference", temperature=None, box=None):
        import openmm
        from openmm import unit

        self.system = system
        self.n_particles = system.getNumParticles()
        self.scale = 1.0
        if temperature is not None:
            if hasattr(temperature, "value_in_unit"):
                temperature = temperature.value_in_unit(unit.kelvin)
            kT = float(unit.MOLAR_GAS_CONSTANT_R.value_in_unit(unit.kilojoule_per_mole / unit.kelvin)) * float(
                temperature)
            self.scale = 1.0 / kT
        integrator = openmm.VerletIntegrator(0.001)
        try:
            plat = openmm.Platform.getPlatformByName(platform)
        except Exception:
            raise ValueError(f"OpenMM platform {platform!r} is not available") from None
        self.context = openmm.Context(system, integrator, plat)
        if box is not None:
            b = np.asarray(box.value_in_unit(unit.nanometer) if hasattr(box, "value_in_unit") else box, float)
            self.context.setPeriodicBoxVectors(openmm.Vec3(b[0], 0, 0), openmm.Vec3(0, b[1], 0),
                                               openmm.Vec3(0, 0, b[2]))

    def evaluate(self, x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Energies (B,) and forces (B, N, 3) for positions (B, N, 3) nm, in kJ/mol (times 1/kT if set)."""
        if x.ndim != 3 or x.shape[1:] != (self.n_particles, 3):
            raise ValueError(f"positions must be (B, {self.n_particles}, 3) nm, got {x.shape}")
        energies = np.empty(x.shape[0])
        forces = np.empty(x.shape)
        for k in range(x.shape[0]):
            self.context.setPositions(x[k])
            state = self.context.getState(getEnergy=True, getForces=True)
            energies[k] = state.getPotentialEnergy()._value  # kJ/mol
            forces[k] = state.getForces(asNumpy=True)._value  # kJ/mol/nm
        return energies * self.scale, forces * self.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        single = x.dim() == 2
        x = x.unsqueeze(0) if single else x
        e = _OpenMMEnergyFunction.apply(x, self)
        return e[0] if single else e


__all__ = ["PIDPConfig", "train_pidp", "pidp_loss", "fokker_planck_residual", "boltzmann_score", "OpenMMEnergy"]

"""Numerical integrators of the reverse VP SDE (ancestral DDPM) and of the probability-flow ODE (fixed-step
Runge-Kutta, adaptive RK45, and the multistep DPM-Solver++(2M) for sampling in few evaluations).

Everything here works on dimensionless coordinates y of shape (B, N, 3) and a score function
``score(y, t) -> (B, N, 3)`` with ``t`` of shape (B,). When ``remove_com`` is set, the dynamics stays in the
centroid-free subspace of dimension 3(N - 1) (see :mod:`openmm_cgml.nn.dig_model`).
"""
import math
from typing import Callable, Optional

import numpy as np
import torch

from ..nn.dig_model import subspace_rademacher
from ..nn.sde import VPSDE
from ..pbc import remove_centroid

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
GuidanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ODE_METHODS = ("heun", "rk4", "euler", "rk45")


def centre(y: torch.Tensor, remove_com: bool) -> torch.Tensor:
    """Project (B, N, 3) onto the centroid-free subspace when ``remove_com``."""
    return remove_centroid(y) if remove_com else y


def subspace_dim(n_beads: int, remove_com: bool) -> int:
    """Dimension of the space the diffusion lives in."""
    return 3 * (n_beads - 1) if remove_com else 3 * n_beads


def ancestral_sample(
    score: ScoreFn,
    sde: VPSDE,
    y_init: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    remove_com: bool,
    guidance: Optional[GuidanceFn] = None,
) -> torch.Tensor:
    """DDPM ancestral sampling from the prior sample ``y_init`` (t = 1) down to t = 0 in ``steps`` steps.

    The chain is the SDE's discretisation on t_i = i / steps; ``guidance(y, t)`` returns an extra score term
    (B, N, 3) added to the model score (classifier guidance).
    """
    t_grid = torch.arange(0, steps + 1, dtype=torch.float64) / steps
    ab = sde.alpha_bar(t_grid)
    y = y_init
    for i in range(steps, 0, -1):
        beta = float(1.0 - ab[i] / ab[i - 1])
        t = torch.full((y.shape[0],), float(t_grid[i]), dtype=y.dtype, device=y.device)
        with torch.no_grad():
            s = score(y, t)
        if guidance is not None:
            s = s + guidance(y, t)
        mean = (y + beta * s) / math.sqrt(1.0 - beta)
        if i > 1:
            # Variance beta_i (DDPM's upper choice, the reverse SDE's own noise); the posterior variance
            # beta~_i under-disperses at a few hundred steps (measured on Gaussian targets).
            var = beta
            z = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            y = centre(mean + math.sqrt(var) * z, remove_com)
        else:
            y = centre(mean, remove_com)
    return y.detach()


def log_snr_grid(sde: VPSDE, t_start: float, t_end: float, steps: int) -> torch.Tensor:
    """``steps + 1`` diffusion times from ``t_start`` down to ``t_end``, equally spaced in lambda (float64;
    lambda is inverted by linear interpolation on a fine grid of t)."""
    fine = torch.linspace(t_start, t_end, 20001, dtype=torch.float64)  # lambda increases along it
    lam = sde.half_log_snr(fine)
    targets = torch.linspace(float(lam[0]), float(lam[-1]), int(steps) + 1, dtype=torch.float64)
    idx = torch.searchsorted(lam, targets).clamp(1, len(lam) - 1)
    w = (targets - lam[idx - 1]) / (lam[idx] - lam[idx - 1])
    t = fine[idx - 1] + w * (fine[idx] - fine[idx - 1])
    t[0], t[-1] = t_start, t_end
    return t


def dpm_solver_sample(
    score: ScoreFn, sde: VPSDE, y_init: torch.Tensor, steps: int, t_end: float, remove_com: bool
) -> torch.Tensor:
    """Integrate the probability-flow ODE from the prior draw ``y_init`` (t = 1) to ``t_end`` with
    DPM-Solver++(2M) (Lu et al. 2022): one score evaluation per step.

    The ODE's linear part is integrated exactly in lambda = log(alpha / sigma) and the data prediction
    x0 = (y + sigma^2 score) / alpha is extrapolated linearly in lambda from the last two steps; steps are
    equally spaced in lambda and the first and last are first order. On a Gaussian chain with its exact score,
    20 steps deviate 0.0015 (dimensionless rms) from a 400-step Heun solution, against 0.025 for 10 Heun steps
    (the same 20 evaluations); on the polymer DiG, 20 steps stay within 2 % of 100 Heun steps in <Rg^2>.
    """
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    t = log_snr_grid(sde, 1.0, float(t_end), int(steps))
    alpha, sigma, lam = sde.marginal_mean_coef(t), sde.marginal_std(t), sde.half_log_snr(t)
    y = centre(y_init.detach(), remove_com)
    previous = None  # (x0, h) of the step before
    for i in range(1, len(t)):
        tt = torch.full((y.shape[0],), float(t[i - 1]), dtype=y.dtype, device=y.device)
        with torch.no_grad():
            s = score(y, tt)
        x0 = centre((y + float(sigma[i - 1]) ** 2 * s) / float(alpha[i - 1]), remove_com)
        h = float(lam[i] - lam[i - 1])
        d = x0
        if previous is not None and i < len(t) - 1:
            r = previous[1] / h
            d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * previous[0]
        y = centre(float(sigma[i] / sigma[i - 1]) * y - float(alpha[i]) * math.expm1(-h) * d, remove_com)
        previous = (x0, h)
    return y.detach()


def _divergence_exact(drift: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Trace of d drift / d y by one backward pass per coordinate; (B,)."""
    flat = drift.reshape(drift.shape[0], -1)
    div = torch.zeros(drift.shape[0], dtype=drift.dtype, device=drift.device)
    for k in range(flat.shape[1]):
        (g,) = torch.autograd.grad(flat[:, k].sum(), y, retain_graph=True)
        div = div + g.reshape(g.shape[0], -1)[:, k]
    return div


def _divergence_hutchinson(drift: torch.Tensor, y: torch.Tensor, probes: torch.Tensor) -> torch.Tensor:
    """Hutchinson estimate E[v^T (d drift/d y) v] with the given probe vectors (K, B, N, 3); (B,)."""
    total = torch.zeros(drift.shape[0], dtype=drift.dtype, device=drift.device)
    for k in range(probes.shape[0]):
        v = probes[k]
        (g,) = torch.autograd.grad((drift * v).sum(), y, retain_graph=True)
        total = total + (g * v).reshape(g.shape[0], -1).sum(1)
    return total / probes.shape[0]


class ProbabilityFlow:
    """The probability-flow ODE dy/dt = f(y, t) - 1/2 g(t)^2 score(y, t), optionally with d log p / dt.

    Args:
        score: score function on (B, N, 3) coordinates.
        sde: the forward SDE.
        remove_com: keep the flow in the centroid-free subspace (non-periodic systems).
    """

    def __init__(self, score: ScoreFn, sde: VPSDE, remove_com: bool):
        self.score = score
        self.sde = sde
        self.remove_com = remove_com

    def drift(self, y: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((y.shape[0],), t, dtype=y.dtype, device=y.device)
        y = centre(y, self.remove_com)  # so the Jacobian is taken on the subspace only
        beta = float(self.sde.beta(torch.tensor(t, dtype=torch.float64)))
        return centre(-0.5 * beta * (y + self.score(y, tt)), self.remove_com)

    def drift_and_divergence(self, y: torch.Tensor, t: float, probes: Optional[torch.Tensor]):
        """Drift (B, N, 3) and its divergence (B,): exact when ``probes`` is None, else Hutchinson."""
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            f = self.drift(y, t)
            div = _divergence_exact(f, y) if probes is None else _divergence_hutchinson(f, y, probes)
        return f.detach(), div.detach()

    def integrate(
        self,
        y: torch.Tensor,
        t0: float,
        t1: float,
        steps: int,
        method: str = "heun",
        with_logp: bool = False,
        exact: bool = True,
        n_probes: int = 1,
        generator: Optional[torch.Generator] = None,
    ):
        """Integrate from t0 to t1 (either direction) in ``steps`` fixed steps.

        Returns ``y(t1)`` and, with ``with_logp``, the integral of the divergence, int_{t0}^{t1} div dt (B,),
        so that log p_{t0}(y0) = log p_{t1}(y1) + that integral. Hutchinson probes (Rademacher) are drawn once
        per integration and reused at every step (as in FFJORD), which keeps the estimate unbiased.
        """
        if method not in ODE_METHODS:
            raise ValueError(f"unknown ODE method {method!r}; choose one of {ODE_METHODS}")
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        y = centre(y.detach(), self.remove_com)
        probes = None
        if with_logp and not exact:
            gen = generator if generator is not None else torch.Generator().manual_seed(0)
            probes = subspace_rademacher(n_probes, tuple(y.shape), self.remove_com, gen).to(y)
        if method == "rk45":
            return self._integrate_scipy(y, t0, t1, with_logp, probes)

        def rhs(yy, tt):
            if with_logp:
                return self.drift_and_divergence(yy, tt, probes)
            with torch.no_grad():
                return self.drift(yy, tt), None

        h = (t1 - t0) / steps
        logp = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
        t = t0
        for _ in range(int(steps)):
            k1, d1 = rhs(y, t)
            if method == "euler":
                y, dl = y + h * k1, (d1 if with_logp else None)
                if with_logp:
                    logp = logp + h * dl
            elif method == "heun":
                k2, d2 = rhs(y + h * k1, t + h)
                y = y + 0.5 * h * (k1 + k2)
                if with_logp:
                    logp = logp + 0.5 * h * (d1 + d2)
            else:  # rk4
                k2, d2 = rhs(y + 0.5 * h * k1, t + 0.5 * h)
                k3, d3 = rhs(y + 0.5 * h * k2, t + 0.5 * h)
                k4, d4 = rhs(y + h * k3, t + h)
                y = y + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
                if with_logp:
                    logp = logp + h / 6.0 * (d1 + 2 * d2 + 2 * d3 + d4)
            t = t + h
        y = centre(y, self.remove_com)
        return (y, logp) if with_logp else y

    def _integrate_scipy(self, y, t0, t1, with_logp, probes):
        # Adaptive RK45 (as in DiG's released density code); state = flattened y plus the log-density integral.
        from scipy.integrate import solve_ivp

        shape, dtype, device = y.shape, y.dtype, y.device
        n_y = y.numel()

        def fun(t, state):
            yy = torch.as_tensor(state[:n_y], dtype=dtype, device=device).reshape(shape)
            if with_logp:
                f, div = self.drift_and_divergence(yy, float(t), probes)
                return np.concatenate([f.cpu().numpy().ravel(), div.cpu().numpy()]).astype(np.float64)
            with torch.no_grad():
                return self.drift(yy, float(t)).cpu().numpy().ravel().astype(np.float64)

        state0 = y.cpu().numpy().ravel().astype(np.float64)
        if with_logp:
            state0 = np.concatenate([state0, np.zeros(shape[0])])
        sol = solve_ivp(fun, (t0, t1), state0, method="RK45", rtol=1e-5, atol=1e-5)
        end = sol.y[:, -1]
        y1 = centre(torch.as_tensor(end[:n_y], dtype=dtype, device=device).reshape(shape), self.remove_com)
        if with_logp:
            return y1, torch.as_tensor(end[n_y:], dtype=dtype, device=device)
        return y1

"""Variance-preserving (Ornstein–Uhlenbeck) forward SDE used by the DiG diffusion model.

The forward process on dimensionless coordinates y (positions divided by a length scale) runs over
t in [0, 1]::

    dy = -1/2 beta(t) y dt + sqrt(beta(t)) dW

so the marginal given y0 is Gaussian with mean sqrt(alpha_bar(t)) y0 and standard deviation
sqrt(1 - alpha_bar(t)), where alpha_bar(t) = exp(-int_0^t beta(s) ds). The schedule beta(t) is either linear or
the sigmoid of DiG's released code; both have closed-form integrals, so the continuous SDE (used by the
probability-flow ODE and by PIDP's Fokker–Planck residual) and the N-step discrete chain (used by ancestral DDPM
sampling) describe the same process: the discrete step i covers (t_{i-1}, t_i] with t_i = i / N and
1 - beta_i = alpha_bar(t_i) / alpha_bar(t_{i-1}).
"""
import math
from typing import Callable

import torch

Score = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SCHEDULES = ("sigmoid", "linear")


def _as_tensor(t) -> torch.Tensor:
    # Keep a tensor's own dtype (float64 for the discrete chain); plain numbers become default-dtype tensors.
    return t if isinstance(t, torch.Tensor) else torch.tensor(float(t), dtype=torch.get_default_dtype())


class VPSDE:
    """VP SDE with a linear or sigmoid beta(t) schedule.

    Args:
        schedule: "sigmoid" (beta rises as a logistic curve over [-sigmoid_range, +sigmoid_range], DiG) or "linear".
        beta_min: beta(t) at t = 0, per unit diffusion time.
        beta_max: beta(t) at t = 1 (sigmoid: the upper asymptote), per unit diffusion time.
        n_steps: number of discrete steps of the ancestral chain.
        sigmoid_range: half-width of the logistic argument (6 gives DiG's ``linspace(-6, 6)``).
    """

    def __init__(
        self,
        schedule: str = "sigmoid",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        n_steps: int = 500,
        sigmoid_range: float = 6.0,
    ):
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown beta schedule {schedule!r}; choose one of {SCHEDULES}")
        if not 0.0 < beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be a positive integer, got {n_steps}")
        self.schedule = schedule
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)
        self.n_steps = int(n_steps)
        self.sigmoid_range = float(sigmoid_range)

    def config(self) -> dict:
        """Constructor arguments as a JSON-able dict."""
        return {
            "schedule": self.schedule,
            "beta_min": self.beta_min,
            "beta_max": self.beta_max,
            "n_steps": self.n_steps,
            "sigmoid_range": self.sigmoid_range,
        }

    # ---- continuous schedule -------------------------------------------------------------------------------
    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t), per unit diffusion time."""
        t = _as_tensor(t)
        span = self.beta_max - self.beta_min
        if self.schedule == "linear":
            return self.beta_min + span * t
        k = self.sigmoid_range
        return self.beta_min + span * torch.sigmoid(k * (2.0 * t - 1.0))

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """int_0^t beta(s) ds (closed form; the logistic integrates to a softplus)."""
        t = _as_tensor(t)
        span = self.beta_max - self.beta_min
        if self.schedule == "linear":
            return self.beta_min * t + 0.5 * span * t * t
        k = self.sigmoid_range
        sp = torch.nn.functional.softplus
        return self.beta_min * t + span * (sp(k * (2.0 * t - 1.0)) - math.log1p(math.exp(-k))) / (2.0 * k)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Signal fraction alpha_bar(t) = exp(-int_0^t beta)."""
        return torch.exp(-self.integrated_beta(t))

    def marginal_mean_coef(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(alpha_bar(t)): the mean of y_t given y_0 is this times y_0."""
        return torch.exp(-0.5 * self.integrated_beta(t))

    def marginal_std(self, t: torch.Tensor) -> torch.Tensor:
        """sqrt(1 - alpha_bar(t)): the standard deviation of y_t given y_0."""
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def half_log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda(t) = log(sqrt(alpha_bar) / sqrt(1 - alpha_bar)), decreasing in t (DPM-Solver's time variable)."""
        return torch.log(self.marginal_mean_coef(t)) - torch.log(self.marginal_std(t))

    def perturb(self, y0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample y_t from y_0 with the given standard-normal ``noise``; ``t`` broadcasts against y0's rows."""
        return self.marginal_mean_coef(t) * y0 + self.marginal_std(t) * noise

    # ---- SDE / ODE coefficients ----------------------------------------------------------------------------
    def drift(self, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward drift f(y, t) = -1/2 beta(t) y."""
        return -0.5 * self.beta(t) * y

    def diffusion(self, t: torch.Tensor) -> torch.Tensor:
        """Forward diffusion coefficient g(t) = sqrt(beta(t))."""
        return torch.sqrt(self.beta(t))

    # ---- discrete chain ------------------------------------------------------------------------------------
    def discrete_alpha_bars(self) -> torch.Tensor:
        """alpha_bar(t_i) for i = 0..N (index 0 is t = 0, value 1), float64."""
        t = torch.arange(0, self.n_steps + 1, dtype=torch.float64) / self.n_steps
        return self.alpha_bar(t)

    def prior_log_prob(self, y: torch.Tensor, dim: int) -> torch.Tensor:
        """log N(y; 0, I) of the t = 1 prior in ``dim`` dimensions; ``y`` is (B, ...) flattened per row."""
        sq = (y.reshape(y.shape[0], -1) ** 2).sum(dim=1)
        return -0.5 * sq - 0.5 * dim * math.log(2.0 * math.pi)

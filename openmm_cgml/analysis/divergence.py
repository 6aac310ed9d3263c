"""How far apart are two distributions of a scalar (Rg², a bond length)? The Jensen–Shannon divergence of samples."""
import numpy as np


def js_divergence(sample, reference, n_bins: int = 20, bins_from: str = "reference") -> float:
    """Jensen–Shannon divergence (nats, between 0 and ln 2) of the histograms of two 1-D samples.

    The ``n_bins`` bins lie at the quantiles of the ``reference`` sample (``bins_from="reference"``) or of both
    samples pooled (``"pooled"``), with the outer bins open, so every bin of the chosen set holds about the same
    count; a 1e-12 floor keeps empty bins finite.
    """
    a = np.asarray(sample, dtype=np.float64).ravel()
    b = np.asarray(reference, dtype=np.float64).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("js_divergence needs two non-empty samples")
    if bins_from not in ("reference", "pooled"):
        raise ValueError(f"bins_from must be 'reference' or 'pooled', got {bins_from!r}")
    edges = np.quantile(b if bins_from == "reference" else np.concatenate([a, b]), np.linspace(0.0, 1.0, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    p = np.histogram(a, edges)[0] + 1e-12
    q = np.histogram(b, edges)[0] + 1e-12
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)
    return float(0.5 * (p * np.log(p / m)).sum() + 0.5 * (q * np.log(q / m)).sum())

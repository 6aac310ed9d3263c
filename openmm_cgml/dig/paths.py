"""Reaction paths through DiG's latent space: encode two states with the probability-flow ODE, interpolate the
latents, decode every intermediate latent back to a structure."""
import numpy as np
import torch

from .sampler import DiGSampler, _as_structures

INTERPOLATIONS = ("linear", "slerp")


def kabsch_align(mobile: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rigidly rotate/translate ``mobile`` (N, 3) onto ``target`` (N, 3) (least squares; no reflection)."""
    mc, tc = mobile.mean(0), target.mean(0)
    a, b = (mobile - mc).double(), (target - tc).double()
    u, _, vt = torch.linalg.svd(a.T @ b)
    d = torch.sign(torch.det(u @ vt))
    fix = torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=torch.float64))
    rot = u @ fix @ vt
    return ((a @ rot) + tc.double()).to(mobile.dtype)


def interpolate(
    sampler: DiGSampler,
    x_a,
    x_b,
    n_frames: int,
    system=None,
    steps: int = 100,
    method: str = "heun",
    mode: str = "linear",
    align: bool = True,
) -> torch.Tensor:
    """Frames (n_frames, N, 3) nm from state ``x_a`` to ``x_b`` (each (N, 3) nm) along a latent-space path.

    Both end points are encoded to prior latents by the probability-flow ODE, the latents are interpolated
    (``mode="linear"`` as in DiG, or "slerp", which keeps the latent norm typical of the Gaussian prior), and each
    latent is decoded. The first and last frames therefore reproduce the inputs up to the ODE's discretisation
    error. ``align`` superimposes x_b on x_a first (non-periodic systems), so the path carries no rigid rotation.
    Write the frames as DCD with mdtraj (``mdtraj.Trajectory(frames.numpy(), beadmap.to_mdtraj_topology())``).
    """
    if mode not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}; choose one of {INTERPOLATIONS}")
    if int(n_frames) < 2:
        raise ValueError(f"a path needs at least 2 frames, got {n_frames}")
    a = _as_structures(x_a)[0]
    b = _as_structures(x_b)[0]
    if a.shape != b.shape:
        raise ValueError(f"end states differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    desc = sampler.descriptor(system if system is not None else a.shape[0])
    if align and not desc.periodic:
        b = kabsch_align(b, a)
    z = sampler.encode(torch.stack([a, b]), desc, steps, method)
    lam = torch.linspace(0.0, 1.0, int(n_frames), dtype=z.dtype).view(-1, 1, 1)
    if mode == "linear":
        zs = (1 - lam) * z[0] + lam * z[1]
    else:
        za, zb = z[0].reshape(-1), z[1].reshape(-1)
        omega = torch.arccos(torch.clamp(torch.dot(za, zb) / (za.norm() * zb.norm()), -1.0, 1.0))
        so = torch.sin(omega)
        if float(so) < 1e-6:
            zs = (1 - lam) * z[0] + lam * z[1]
        else:
            zs = (torch.sin((1 - lam) * omega) * z[0] + torch.sin(lam * omega) * z[1]) / so
    return sampler.decode(zs, desc, steps, method)


def write_dcd(frames, topology, path: str) -> str:
    """Write frames (T, N, 3) nm as a DCD file with an mdtraj or OpenMM topology of the beads."""
    import mdtraj

    if not isinstance(topology, mdtraj.Topology):
        topology = mdtraj.Topology.from_openmm(topology)
    frames = np.asarray(frames.detach().cpu() if isinstance(frames, torch.Tensor) else frames, dtype=np.float32)
    mdtraj.Trajectory(frames, topology).save_dcd(path)
    return path


__all__ = ["interpolate", "kabsch_align", "write_dcd"]

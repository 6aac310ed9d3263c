"""Training configuration of the learned CG model (dataclass <-> YAML)."""
import dataclasses
from dataclasses import dataclass
from typing import Optional

import yaml

from .model import ArchitectureConfig, ModelConfig


@dataclass
class TrainConfig(ArchitectureConfig):
    """Everything that defines a training run (lengths nm): the architecture fields of
    :class:`~openmm_cgml.training.model.ArchitectureConfig` plus data and optimisation settings."""

    # data
    frames_per_step: int = 1  # model time step = frames_per_step x the datasets' frame interval
    validation_fraction: float = 0.1
    split: str = "auto"  # "trajectory" (whole datasets held out), "time" (last part of each), "auto"
    max_frames: Optional[int] = None  # per dataset (first frames), None = all
    max_validation_windows: int = 64
    # optimisation
    batch_size: int = 8  # windows (frames with their history and next frame) per iteration
    n_iterations: int = 5000
    lr: float = 1e-3
    lr_final: float = 1e-4  # cosine decay from lr to lr_final
    grad_clip: float = 1.0
    input_noise: float = 0.0  # nm, std of the random-walk noise added to the input positions (GNS)
    dynamics_weight: float = 1.0  # weight of the Gaussian NLL (0 skips the dynamics/embedding loss)
    score_weight: float = 1.0  # weight of the denoising score-matching loss (0 skips the score GNN)
    checkpoint_every: int = 200
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown training config keys {unknown}; valid keys: {sorted(names)}")
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_yaml(cls, path: str) -> "TrainConfig":
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a mapping of training config keys")
        return cls.from_dict(values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str):
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)

    def validate(self):
        if self.history_length < 1 or self.frames_per_step < 1 or self.batch_size < 1:
            raise ValueError("history_length, frames_per_step and batch_size must be >= 1")
        if self.cutoff <= 0 or self.sigma_min <= 0 or self.sigma_max < self.sigma_min:
            raise ValueError("need cutoff > 0 nm and sigma_max >= sigma_min > 0 nm")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.split not in ("auto", "trajectory", "time"):
            raise ValueError(f"split must be 'auto', 'trajectory' or 'time', got {self.split!r}")
        if self.dynamics_weight < 0 or self.score_weight < 0 or self.dynamics_weight + self.score_weight == 0:
            raise ValueError("dynamics_weight and score_weight must be >= 0 and not both 0")
        if not 0 <= self.refine_levels <= self.n_sigmas:
            raise ValueError(f"refine_levels must be between 0 and n_sigmas ({self.n_sigmas})")

    def model_config(self, **derived) -> ModelConfig:
        """The :class:`ModelConfig` of this run, with the data-derived fields given as keywords."""
        names = {f.name for f in dataclasses.fields(ArchitectureConfig)}
        values = {k: v for k, v in self.to_dict().items() if k in names}
        values.update(derived)
        return ModelConfig(**values)

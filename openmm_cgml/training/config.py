"""Training configuration of the learned CG model (a validated dataclass <-> YAML)."""
import dataclasses
from dataclasses import dataclass
from typing import List, Optional

from .loop import OptimConfig
from .model import ArchitectureConfig, ModelConfig
from .schema import check


#: The parts of a :class:`~openmm_cgml.training.model.CGModel` that ``TrainConfig.freeze`` can hold fixed.
TRAINABLE_PARTS = ("embedding", "dynamics", "score")


@dataclass
class TrainConfig(OptimConfig, ArchitectureConfig):
    """Everything that defines a training run (lengths nm): the architecture fields of
    :class:`~openmm_cgml.training.model.ArchitectureConfig`, the optimisation fields of
    :class:`~openmm_cgml.training.loop.OptimConfig` (``batch_size`` counts windows: frames with their history and
    next frame) plus the data and loss settings below."""

    config_label = "training"

    # data
    frames_per_step: int = 1  # model time step = frames_per_step x the datasets' frame interval
    validation_fraction: float = 0.1
    split: str = "auto"  # "trajectory" (whole datasets held out), "time" (last part of each), "auto"
    max_frames: Optional[int] = None  # per dataset (first frames), None = all
    max_validation_windows: int = 64
    # losses
    input_noise: float = 0.0  # nm, std of the random-walk noise added to the input positions (GNS)
    dynamics_weight: float = 1.0  # weight of the Gaussian NLL (0 skips the dynamics/embedding loss)
    score_weight: float = 1.0  # weight of the denoising score-matching loss (0 skips the score GNN)
    score_type_balance: bool = False  # every bead type weighs the same in the score loss (else every bead does)
    # the score loss on only the lowest score_levels noise levels (0: all): those the refinement visits
    score_levels: int = 0
    # fine-tuning: start from a trained model's weights and data scales (a model directory or shipped name; same
    # architecture and bead types), and keep the parameters of the named parts fixed (embedding, dynamics, score)
    init_from: Optional[str] = None
    freeze: List[str] = dataclasses.field(default_factory=list)

    def validate(self):
        super().validate()
        check(self.frames_per_step >= 1, f"frames_per_step must be >= 1, got {self.frames_per_step}")
        check(0.0 <= self.validation_fraction < 1.0,
              f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        check(self.split in ("auto", "trajectory", "time"),
              f"split must be 'auto', 'trajectory' or 'time', got {self.split!r}")
        check(self.max_frames is None or self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}")
        check(self.max_validation_windows >= 0,
              f"max_validation_windows must be >= 0, got {self.max_validation_windows}")
        check(self.input_noise >= 0, f"input_noise must be >= 0 nm, got {self.input_noise}")
        check(self.dynamics_weight >= 0 and self.score_weight >= 0 and self.dynamics_weight + self.score_weight > 0,
              "dynamics_weight and score_weight must be >= 0 and not both 0")
        check(0 <= self.score_levels <= self.n_sigmas,
              f"score_levels must be between 0 (all) and n_sigmas ({self.n_sigmas}), got {self.score_levels}")
        check(set(self.freeze) <= set(TRAINABLE_PARTS) and len(set(self.freeze)) < len(TRAINABLE_PARTS),
              f"freeze must list some (not all) of {list(TRAINABLE_PARTS)}, got {self.freeze!r}")

    def model_config(self, **derived) -> ModelConfig:
        """The :class:`ModelConfig` of this run, with the data-derived fields given as keywords."""
        names = {f.name for f in dataclasses.fields(ArchitectureConfig)}
        values = {k: v for k, v in self.to_dict().items() if k in names}
        values.update(derived)
        return ModelConfig(**values)

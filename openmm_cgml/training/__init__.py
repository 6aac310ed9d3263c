"""Training of the learned CG models (dynamics + score + embedding GNNs; DiG in ``training.dig``), all through
the one loop of ``training.loop``; shipped models by name (``load_model("peo-litfsi")``)."""
from .config import TrainConfig
from .loop import OptimConfig, TrainingLoop
from .model import (DEFAULT_MODEL, PRETRAINED_MODELS, BeadVocabulary, CGModel, ModelConfig,
                    load_model, model_path)
from .train import train, train_main

__all__ = ["BeadVocabulary", "CGModel", "DEFAULT_MODEL", "ModelConfig", "OptimConfig",
           "PRETRAINED_MODELS", "TrainConfig", "TrainingLoop", "load_model", "model_path", "train", "train_main"]

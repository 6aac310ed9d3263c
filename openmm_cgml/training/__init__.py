"""Training of the learned CG models (dynamics + score + embedding GNNs; DiG in ``training.dig``)."""
from .config import TrainConfig
from .model import BeadVocabulary, CGModel, ModelConfig, load_model
from .train import train, train_main

__all__ = ["BeadVocabulary", "CGModel", "ModelConfig", "TrainConfig", "load_model", "train", "train_main"]

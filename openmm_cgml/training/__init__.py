"""Training of the learned CG models (dynamics + score + embedding GNNs; DiG in ``training.dig``)."""
from .model import BeadVocabulary, CGModel, ModelConfig, load_model

__all__ = ["BeadVocabulary", "CGModel", "ModelConfig", "load_model"]

"""unitok: a cross-modal (image and speech) tokenizer framework on one Transformer autoencoder core."""

__version__ = "0.1.0"

from unitok.adapter import ModalityAdapter, Tokens
from unitok.registry import create_model, list_models, load_pretrained

__all__ = ["ModalityAdapter", "Tokens", "create_model", "list_models", "load_pretrained"]

"""Building blocks of the core: RoPE, attention blocks, bottlenecks."""

from unitok.layers.blocks import Block, RopeAttention, ffn_hidden_dim, make_norm_layer
from unitok.layers.rope import AxialRoPE, apply_rope, grid_coords

__all__ = ["AxialRoPE", "Block", "RopeAttention", "apply_rope", "ffn_hidden_dim", "grid_coords", "make_norm_layer"]

"""Modality adapters and models built on the unitok core (installed as ``unitok.modalities``)."""

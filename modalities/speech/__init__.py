"""Speech: the waveform frame adapter (models, data and evaluation arrive with the speech issues)."""

"""twinsnn: spiking neural networks trained with twin network augmentation (TNA)
and compressed to ternary weights."""

__version__ = "0.1.0"

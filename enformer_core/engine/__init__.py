"""Training-loop extensions registered in MMEngine's root registries."""
from .hooks import NonFiniteLossError, NonFiniteLossHook, ProgressBarHook, TimeBudgetHook

__all__ = ['NonFiniteLossError', 'NonFiniteLossHook', 'ProgressBarHook', 'TimeBudgetHook']

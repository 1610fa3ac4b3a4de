"""Training-loop extensions registered in MMEngine's root registries."""
from .hooks import ProgressBarHook, TimeBudgetHook

__all__ = ['ProgressBarHook', 'TimeBudgetHook']

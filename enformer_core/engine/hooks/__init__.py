"""MMEngine hooks any of the three toolboxes' configs can use (``custom_hooks``)."""
from .progress import ProgressBarHook
from .time_budget import TimeBudgetHook

__all__ = ['ProgressBarHook', 'TimeBudgetHook']

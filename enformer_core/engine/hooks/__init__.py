"""MMEngine hooks any of the three toolboxes' configs can use (``custom_hooks``)."""
from .non_finite import NonFiniteLossError, NonFiniteLossHook
from .progress import ProgressBarHook
from .time_budget import TimeBudgetHook

__all__ = ['NonFiniteLossError', 'NonFiniteLossHook', 'ProgressBarHook', 'TimeBudgetHook']

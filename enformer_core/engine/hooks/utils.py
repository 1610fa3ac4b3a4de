"""Small helpers of the hooks."""
from mmengine.runner import IterBasedTrainLoop


def is_iter_based(runner) -> bool:
    """Whether ``runner`` trains by iterations (``IterBasedTrainLoop``) rather than epochs."""
    return isinstance(runner.train_loop, IterBasedTrainLoop)

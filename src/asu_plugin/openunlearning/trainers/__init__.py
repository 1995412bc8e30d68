"""The trainers this plugin registers in OpenUnlearning's ``TRAINER_REGISTRY`` (by class name,
which is the ``handler`` of ``configs/trainer/<name>.yaml``). Importing this package imports
OU (``trainer.unlearn``): only possible once OU's ``src/`` is importable."""

from .asu import ASU_GD, ASU_IDK, ASU_KL, ASUTrainer
from .sga import SGA

__all__ = ["ASUTrainer", "ASU_GD", "ASU_IDK", "ASU_KL", "SGA"]

"""Score the smoothed teacher itself with OpenUnlearning's evaluators.

ASU moves the student towards the original model with its attention at temperature tau. To
see that target in OU's own metrics (forget ROUGE, truth ratio, model utility, ...), load it
through OU's model registry: ``++model.model_handler=ASUSmoothedTeacher`` makes OU's
``get_model`` call :meth:`ASUSmoothedTeacher.from_pretrained`, which loads the model as
OU would and leaves it smoothed for every forward and every ``generate`` step:

    python src/eval.py experiment=eval/tofu/asu_cpu task_name=teacher \\
        ++model.model_handler=ASUSmoothedTeacher +model.model_args.asu_tau=2.3 \\
        [+model.model_args.asu_layers="'0-3'"] [+model.model_args.asu_heads=[0,1]]

Registered by :func:`asu_plugin.register` (hence by the Hydra plugin in every OU run).
"""

from __future__ import annotations

import logging

from transformers import AutoModelForCausalLM

from ..core.attention_backend import attention_backend, make_reachable
from ..core.errors import SmoothingError
from ..core.smoothing import smoothed_attention

logger = logging.getLogger(__name__)


def smooth_until_unloaded(model, tau, layers=None, heads=None):
    """Enter ``smoothed_attention`` on ``model`` for good (validated and self-checked as
    always); ``model.asu_unsmooth()`` restores it. Returns the model."""
    context = smoothed_attention(model, tau, layers, heads)
    context.__enter__()
    model.asu_unsmooth = lambda: context.__exit__(None, None, None)
    model.asu_smoothing = {"tau": tau, "layers": layers, "heads": heads}
    return model


class ASUSmoothedTeacher:
    """OU model handler: ``AutoModelForCausalLM`` with smoothed attention (ASU's forget teacher)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *args, asu_tau=None, asu_layers=None,
                        asu_heads=None, **kwargs):
        if asu_tau is None:
            raise SmoothingError(
                "model_handler=ASUSmoothedTeacher needs the temperature: add +model.model_args.asu_tau=2.3 "
                "(optionally +model.model_args.asu_layers / asu_heads)"
            )
        model = AutoModelForCausalLM.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        loaded_with = attention_backend(model)
        backend = make_reachable(model)  # OU's model configs ask for flash_attention_2, which smoothing cannot reach
        if backend != loaded_with:
            logger.info("ASUSmoothedTeacher: attention %s -> %s (same weights), so smoothing can reach it",
                        loaded_with, backend)
        layers = list(asu_layers) if asu_layers is not None and not isinstance(asu_layers, (str, int)) else asu_layers
        heads = list(asu_heads) if asu_heads is not None and not isinstance(asu_heads, (str, int)) else asu_heads
        smooth_until_unloaded(model, asu_tau, layers, heads)
        logger.info("ASUSmoothedTeacher: %s with attention at tau=%s (layers=%s, heads=%s)",
                    pretrained_model_name_or_path, asu_tau, layers or "all", heads or "all")
        return model

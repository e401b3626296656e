"""Study 2 - steering refinement (notebook 03): steering vectors from small data, denoised (SDCV, arXiv 2505.15038)
or refined (SAE-RSV, arXiv 2509.23799) through an SAE, against CAA, a probe and LoRA-SFT.

Modules: ``concepts`` (training examples, prompts, judges per concept), ``baselines`` (LoRA-SFT, A/B read-out),
``experiment`` (batched steered generation, LoRA-SFT generations, SAE-RSV's batched relevance step),
``evaluation`` (the (N, seed) grid, teacher-forced dose-response and effect at a fixed fluency cost, AxBench-style
generation scores, SAE-RSV relevance from top contexts). The vector
methods themselves are toolkit code (:mod:`helpers.core.steering`). Notebook: ``from helpers.studies import
steering_refinement as study``.
"""
from helpers.core.steering import VECTOR_METHODS, vector_method  # noqa: F401

from .baselines import *  # noqa: F401,F403
from .baselines import __all__ as _b
from .concepts import *  # noqa: F401,F403
from .concepts import __all__ as _c
from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__ as _v
from .experiment import *  # noqa: F401,F403
from .experiment import __all__ as _e

__all__ = [*_c, *_b, *_e, *_v, "VECTOR_METHODS", "vector_method"]

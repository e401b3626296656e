"""Study 1 - reasoning features (notebook 02): ReasonScore (arXiv 2503.18878), interpretation, steering, word ban.

Modules: ``reason_score`` (vocabulary, windows, Eq. 3-6, selection), ``answers`` (reading generations),
``experiments`` (corpus, held-out windows, free generation under edits and bans), ``causal`` (teacher-forced
causal tests), ``sal`` (Soundness-Aware Level, arXiv 2510.15216). Everything is re-exported here, so a
notebook does ``from helpers.studies import reasoning as study``.
"""
from .answers import *  # noqa: F401,F403
from .answers import __all__ as _a
from .causal import *  # noqa: F401,F403
from .causal import __all__ as _c
from .experiments import *  # noqa: F401,F403
from .experiments import __all__ as _e
from .reason_score import *  # noqa: F401,F403
from .reason_score import __all__ as _r
from .sal import *  # noqa: F401,F403
from .sal import __all__ as _s

__all__ = [*_r, *_a, *_e, *_c, *_s]

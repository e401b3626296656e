"""Study 3 - scoring skills (notebook 04): LLM short-answer scoring on ASAP-SAS with rubrics built by a learnable,
item-agnostic skill (arXiv 2605.29274). Modules: ``items``, ``evaluation``, ``decision``, ``skills``, ``rulecheck``,
``optimize``, ``optimize_v2``, ``gepa_baseline`` (GEPA on the same rules: the baseline row), ``experiment`` (the
notebook's design: item folds, conditions, paired contrasts, figures), ``cli`` (``python -m helpers score``);
prompts and the generic word list are text files in ``prompts/``. Notebook: ``from helpers.studies import scoring as
study``.
"""
from .decision import *  # noqa: F401,F403
from .decision import __all__ as _d
from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__ as _ev
from .experiment import *  # noqa: F401,F403
from .experiment import __all__ as _x
from .gepa_baseline import *  # noqa: F401,F403
from .gepa_baseline import __all__ as _g
from .items import *  # noqa: F401,F403
from .items import __all__ as _i
from .optimize import *  # noqa: F401,F403
from .optimize import __all__ as _o
from .optimize_v2 import *  # noqa: F401,F403
from .optimize_v2 import __all__ as _o2
from .rulecheck import *  # noqa: F401,F403
from .rulecheck import __all__ as _rc
from .skills import *  # noqa: F401,F403
from .skills import __all__ as _s

__all__ = [*_i, *_ev, *_d, *_s, *_rc, *_o, *_o2, *_g, *_x]

"""Study 3 - scoring skills (notebook 04): LLM short-answer scoring on ASAP-SAS with rubrics built by a learnable,
item-agnostic skill (arXiv 2605.29274). Modules: ``items``, ``evaluation``, ``skills``, ``optimize``, ``conditions``;
prompts and the generic word list are text files in ``prompts/``. Notebook: ``from helpers.studies import scoring as
study``.
"""
from .conditions import *  # noqa: F401,F403
from .conditions import __all__ as _c
from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__ as _ev
from .items import *  # noqa: F401,F403
from .items import __all__ as _i
from .optimize import *  # noqa: F401,F403
from .optimize import __all__ as _o
from .skills import *  # noqa: F401,F403
from .skills import __all__ as _s

__all__ = [*_i, *_ev, *_s, *_o, *_c]

"""The three studies, one package each. A study imports only ``helpers.core`` and ``helpers.registry``."""

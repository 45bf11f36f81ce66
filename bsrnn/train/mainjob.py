"""The main job moved to ``bsrnn.experiments.mainjob``, beside the other experiments; this name
is the same module (``bsrnn.train.mainjob is bsrnn.experiments.mainjob``)."""

import sys

from bsrnn.experiments import mainjob as _mainjob

sys.modules[__name__] = _mainjob

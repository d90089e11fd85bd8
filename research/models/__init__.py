"""Model zoo. ``create(name, num_classes=..., **kw)`` -> linen module; ``names()`` lists them.

Importing this package registers every model family.
"""

from research.models.registry import create, names, register, register_pattern

# Families register themselves on import.
from research.models import cifar_resnet as _cifar_resnet  # noqa: F401,E402
from research.models import classic as _classic  # noqa: F401,E402
from research.models import densenet as _densenet  # noqa: F401,E402
from research.models import drn_igc as _drn_igc  # noqa: F401,E402
from research.models import fractalnet as _fractalnet  # noqa: F401,E402
from research.models import mobile as _mobile  # noqa: F401,E402
from research.models import inception as _inception  # noqa: F401,E402
from research.models import resnet as _resnet  # noqa: F401,E402
from research.models import detection as _detection  # noqa: F401,E402  (family "detection")
from research.models import graph as _graph  # noqa: F401,E402  (family "graph")
from research.models import segmentation as _segmentation  # noqa: F401,E402  (families "segmentation", "dense")
from research.models import generative as _generative  # noqa: F401,E402  (family "generative")
from research.models.sequence import tener as _tener  # noqa: F401,E402  (family "sequence")
from research.models.sequence import fasttext as _fasttext  # noqa: F401,E402  (family "sequence")
from research.models.sequence import captioning as _captioning  # noqa: F401,E402  (family "sequence")
from research.models.sequence import voice_face as _voice_face  # noqa: F401,E402  (family "sequence")
from research.models.sequence import doctor2vec as _doctor2vec  # noqa: F401,E402  (family "sequence")
from research.models.sequence import audio as _audio  # noqa: F401,E402  (family "sequence")

__all__ = ["create", "names", "register", "register_pattern"]

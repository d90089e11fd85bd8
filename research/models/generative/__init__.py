"""Generative models (family ``generative``): DCGAN-style generator / critic, BEGAN's auto-encoder discriminator,
MLP nets for the 2-D mixture toys, the VAE, and the small CNN whose features the sample-quality metrics use.

Importing this package registers them; the losses and the training alternation live in
``research.train.generative``.
"""

from research.models.generative import gan as gan  # noqa: F401  (registers the GAN nets)
from research.models.generative import vae as vae  # noqa: F401  (registers the VAE and the feature CNN)
from research.models.generative import edit as edit  # noqa: F401  (registers the EDIT generator / discriminator)
from research.models.generative import pqnet as pqnet  # noqa: F401  (registers PQ-NET's part AE and Seq2Seq)

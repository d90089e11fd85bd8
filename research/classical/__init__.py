"""Classical algorithms of seed 003 (and Cnak of seed 000) as pure JAX functions.

Imports only jax and numpy (never models, train or data). Each module cites the seed section it implements:

| module | algorithms | seed |
|---|---|---|
| ``gmm`` | Gaussian mixture by EM (full/diag), ``fit``/``log_prob``/``predict``, one ``e_step``/``m_step`` | 003 §2, §3.1 |
| ``hmm`` | forward-backward, Viterbi, Baum-Welch (categorical, several sequences), ``sample`` | 003 §3.2 |
| ``naive_bayes`` | Gaussian and multinomial naive Bayes | 003 §3.3 |
| ``rpca`` | robust PCA by inexact ALM / ADMM with the adaptive penalty; ``svt``, ``shrink`` | 003 §5, §7 |
| ``geometry`` | fundamental matrix (normalised 8-point, rank 2), RANSAC, Sampson distance, epipolar lines | 003 §8 |
| ``manifold`` | PCA, kernel PCA, Isomap (Floyd-Warshall), LLE, Laplacian eigenmaps, normalized cut | 003 §9 |
| ``dct`` | DCT/IDCT types 1-4 (scipy.fft semantics), ``dctn``, DCT basis, JPEG quantisation | 003 §10 |
| ``divergences`` | KL, JS, Gaussian KL, exact 1-D Wasserstein, log-domain Sinkhorn | 003 §11, §12.2 |
| ``mdp`` | policy evaluation/iteration, value iteration; MC, TD(0), n-step TD, TD(lambda) both views | 003 §13 |
| ``sequences`` | longest increasing subsequence, O(n log n) | 003 §15 |
| ``dpp`` | DPP and k-DPP exact sampling, ``log_prob``, marginal kernel | 003 §16 |
| ``distributions`` | Laplace, Student-t, Cauchy, Beta, GIG, Bernoulli, Poisson, negative binomial: densities, samplers | 003 §29 |
| ``clustering`` | k-means (k-means++), Hungarian ``linear_sum_assignment``, Cnak | 000 Q7 |
| ``assignment`` | padded/masked Hungarian ``masked_linear_sum_assignment`` (forbidden pairs, big-M), ``assignment_matrix`` | 003, 001 Q2 |
| ``affinity_propagation`` | affinity propagation (Frey & Dueck 2007), scikit-learn semantics | 001 Q2 |

Agreement with scikit-learn, hmmlearn, scipy, POT and OpenCV is tested in ``tests/classical``; speed against them
is measured by ``benchmarks/classical.py``; the worked examples are ``python -m experiments.classical``.
"""

from research.classical import (affinity_propagation, assignment, clustering, dct, distributions, divergences, dpp,
                                geometry, gmm, hmm, manifold, mdp, naive_bayes, rpca, sequences)

__all__ = ["affinity_propagation", "assignment", "clustering", "dct", "distributions", "divergences", "dpp", "geometry", "gmm", "hmm", "manifold", "mdp",
           "naive_bayes", "rpca", "sequences"]

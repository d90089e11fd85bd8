"""Manifold learning and normalized cut (seed 003 §9): PCA, kernel PCA, Isomap, LLE, Laplacian eigenmaps, Ncut.

Seed sections: §9.1 Laplace matrix, §9.2 normalized cut, §9.3 PCA, §9.4 nonlinear dimension reduction.

Every embedding takes ``x: [n, d]`` and returns a frozen result dataclass (a pytree) whose ``embedding`` is
``[n, n_components]``:

* ``pca`` (§9.3.1): SVD of the centred data X_c = U S V^T; the loadings l_i of the seed are the rows of V^T
  (``components``), Var(Y_i) = s_i^2 / (n - 1) (``explained_variance``), Y = X_c L (``embedding``).
  ``solver="covariance"`` takes the eigenvectors of X_c^T X_c instead (faster for n >> d, less accurate for
  ill-conditioned data).
* ``kernel_pca`` (§9.4, Schölkopf, Smola & Müller 1998): eigenvectors of the doubly centred kernel matrix
  K_c = (I - 1/n) K (I - 1/n), embedding = eigenvectors * sqrt(eigenvalues) (as scikit-learn's KernelPCA).
* ``isomap`` (§9.4, Tenenbaum, de Silva & Langford 2000): kNN graph with Euclidean edge lengths, all-pairs
  geodesic distances by Floyd–Warshall (``floyd_warshall``: ``lax.fori_loop`` over the pivot, vectorised min),
  classical MDS = kernel PCA of -D^2 / 2.
* ``lle`` (§9.4, Roweis & Saul 2000, "standard" LLE): barycentric weights from the local Gram matrix regularised
  by ``reg * trace``, bottom eigenvectors of M = (I - W)^T (I - W) skipping the constant one.
* ``laplacian_eigenmaps`` (§9.1, §9.4, Belkin & Niyogi 2003): bottom eigenvectors of the normalized Laplacian
  L_sym = I - D^{-1/2} A D^{-1/2}, mapped back by D^{-1/2} (the generalised problem L v = lambda D v), the trivial
  eigenvector dropped — scikit-learn's SpectralEmbedding.
* ``normalized_cut`` (§9.2): spectral clustering. ``method="shi_malik"`` (Shi & Malik 2000, as scikit-learn's
  SpectralClustering): k-means on the first ``n_clusters`` generalised eigenvectors D^{-1/2} u;
  ``method="njw"`` (Ng, Jordan & Weiss 2002): k-means on the rows of U normalised to unit length. The k-means
  (k-means++ seeding from ``key``, Lloyd iterations in ``lax.while_loop``, ``n_init`` restarts under ``vmap``)
  is ``research.classical.clustering.kmeans_core``.

Conventions.
* Sign: every eigen/singular vector is flipped so that its largest-magnitude entry is positive (for ``pca`` the
  largest-magnitude loading of each component; for the others the largest-magnitude embedding coordinate) —
  scikit-learn's ``svd_flip`` / ``_deterministic_vector_sign_flip`` rule, so results are deterministic.
* Neighbours: ``isomap`` and ``lle`` use the ``n_neighbors`` nearest *other* points; ``laplacian_eigenmaps`` and
  ``normalized_cut`` with ``affinity="nearest_neighbors"`` count the point itself among its ``n_neighbors``
  (scikit-learn's ``kneighbors_graph(include_self=True)``), symmetrise A = (C + C^T) / 2 and drop self-loops.
* Degenerate inputs: a disconnected kNN graph makes ``isomap`` / ``laplacian_eigenmaps`` raise ``ValueError``
  (checked on concrete values; under an outer ``jit`` the check cannot raise: the result carries
  ``n_graph_components`` and ``isomap`` replaces unreachable geodesic distances by the largest finite one).
  Isolated nodes of a precomputed affinity get degree 1 (as scipy's ``laplacian``); constant data give a zero
  embedding and zero explained-variance ratios; negative kernel eigenvalues are clipped to zero.
* Memory and time: everything except ``pca`` builds dense [n, n] matrices (O(n^2) memory: n = 20000 in float64
  is 3.2 GB per matrix) and calls a dense ``eigh`` (O(n^3)); Floyd–Warshall is O(n^3). Use float64
  (``jax_enable_x64``) for LLE: its bottom eigenvalues are ~1e-9..1e-6 and a float32 ``eigh`` cannot resolve them
  (swiss roll, n = 300: Procrustes disparity ~5e-2 vs scikit-learn in float32, ~1e-20 in float64); the other
  methods agree with scikit-learn to ~1e-10 (disparity) in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from research.classical import clustering

__all__ = [
  "PCAResult", "KernelPCAResult", "IsomapResult", "LLEResult", "SpectralEmbeddingResult", "NormalizedCutResult",
  "pca", "kernel_pca", "isomap", "lle", "laplacian_eigenmaps", "normalized_cut", "floyd_warshall",
  "pairwise_sq_dists",
]

_HI = lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["embedding", "components", "explained_variance", "explained_variance_ratio",
                                "singular_values", "mean"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class PCAResult:
  """embedding: [n, k] = (x - mean) @ components.T; components: [k, d] (rows: unit loadings l_i);
  explained_variance: [k] = s_i^2 / (n - 1); explained_variance_ratio: [k]; singular_values: [k]; mean: [d]."""
  embedding: jax.Array
  components: jax.Array
  explained_variance: jax.Array
  explained_variance_ratio: jax.Array
  singular_values: jax.Array
  mean: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["embedding", "eigenvalues", "eigenvectors"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class KernelPCAResult:
  """embedding: [n, k] = eigenvectors * sqrt(eigenvalues); eigenvalues: [k] of the centred kernel, descending,
  clipped at 0; eigenvectors: [n, k] unit columns."""
  embedding: jax.Array
  eigenvalues: jax.Array
  eigenvectors: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["embedding", "eigenvalues", "dist_matrix", "n_graph_components"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class IsomapResult:
  """embedding: [n, k]; eigenvalues: [k] of the centred -D^2/2 (descending); dist_matrix: [n, n] geodesic
  distances (unreachable pairs filled, see module docstring); n_graph_components: [] int32."""
  embedding: jax.Array
  eigenvalues: jax.Array
  dist_matrix: jax.Array
  n_graph_components: jax.Array


@functools.partial(jax.tree_util.register_dataclass, data_fields=["embedding", "eigenvalues", "weights",
                                                                    "neighbors"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class LLEResult:
  """embedding: [n, k] (unit-norm eigenvectors of M); eigenvalues: [k] of M (ascending; their sum is
  scikit-learn's ``reconstruction_error_``); weights: [n, n_neighbors] barycentric weights (rows sum to 1);
  neighbors: [n, n_neighbors] int32 indices."""
  embedding: jax.Array
  eigenvalues: jax.Array
  weights: jax.Array
  neighbors: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["embedding", "eigenvalues", "affinity", "n_graph_components"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class SpectralEmbeddingResult:
  """embedding: [n, k] = D^{-1/2} u_i (i = 1..k, u_0 dropped); eigenvalues: [k] of L_sym (ascending, in [0, 2]);
  affinity: [n, n] symmetric A used (zero diagonal); n_graph_components: [] int32."""
  embedding: jax.Array
  eigenvalues: jax.Array
  affinity: jax.Array
  n_graph_components: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["labels", "embedding", "eigenvalues", "centers", "inertia", "n_graph_components"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class NormalizedCutResult:
  """labels: [n] int32 in [0, n_clusters); embedding: [n, n_clusters] spectral coordinates clustered;
  eigenvalues: [n_clusters] of L_sym (ascending); centers: [n_clusters, n_clusters] k-means centres;
  inertia: [] best k-means inertia; n_graph_components: [] int32 (a disconnected graph is allowed here)."""
  labels: jax.Array
  embedding: jax.Array
  eigenvalues: jax.Array
  centers: jax.Array
  inertia: jax.Array
  n_graph_components: jax.Array


# ----------------------------------------------------------------------------------------------------------------
# Validation (Python, static shapes) and small helpers
# ----------------------------------------------------------------------------------------------------------------

def _as_float(x, name: str = "x") -> jax.Array:
  if not hasattr(x, "shape"):
    x = np.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)
          or jnp.issubdtype(x.dtype, jnp.bool_)):
    raise ValueError(f"{name} must be a real-valued array; got dtype {x.dtype}. Pass real floats.")
  x = jnp.asarray(x)
  return x.astype(jnp.result_type(x, jnp.float32))


def _check_2d(x, name: str = "x", min_rows: int = 2) -> tuple[int, int]:
  shape = tuple(np.shape(x))
  if len(shape) != 2:
    raise ValueError(f"{name} must be a 2-D array [n, d] (n points, d features); got shape {shape}. "
                     f"Reshape it, e.g. {name}.reshape(n, -1).")
  n, d = shape
  if n < min_rows or d < 1:
    raise ValueError(f"{name} must have at least {min_rows} rows and 1 column; got shape {shape}.")
  return n, d


def _check_int(value, name: str, lo: int, hi: int, fix: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be a Python int; got {value!r} ({type(value).__name__}).")
  if not lo <= value <= hi:
    raise ValueError(f"{name} must be in [{lo}, {hi}]; got {value}. {fix}")
  return int(value)


def _check_choice(value, name: str, choices: tuple) -> str:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}.")
  return value


def _check_nonneg_scalar(value, name: str) -> None:
  """Checks a Python / concrete scalar is finite and >= 0 (traced values are left alone)."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value)
  if arr.shape != ():
    raise ValueError(f"{name} must be a scalar; got shape {arr.shape}.")
  if not np.isfinite(arr) or arr < 0:
    raise ValueError(f"{name} must be finite and >= 0; got {value!r}.")


def _concrete_int(v):
  """``int(v)`` when ``v`` is concrete, ``None`` under tracing (then no Python-side check is possible)."""
  try:
    return int(v)
  except jax.errors.ConcretizationTypeError:
    return None


def _raise_if_disconnected(n_comp, fn: str, affinity: str, n_neighbors, n: int) -> None:
  c = _concrete_int(n_comp)
  if c is None or c <= 1:
    return
  if affinity == "nearest_neighbors":
    hint = (f"n_neighbors={n_neighbors} is too small: increase n_neighbors (e.g. to {min(2 * n_neighbors, n - 1)}), "
            "or the data hold well-separated groups: embed each one separately")
  elif affinity == "rbf":
    hint = "the rbf affinity underflows to 0 between distant groups: decrease gamma"
  else:
    hint = "the precomputed affinity has several connected components: connect them or embed each separately"
  raise ValueError(f"{fn}: the neighbourhood graph has {c} connected components (needs 1); {hint}.")


def pairwise_sq_dists(x: jax.Array, y: jax.Array | None = None) -> jax.Array:
  """Squared Euclidean distances ``||x_i - y_j||^2`` by the Gram expansion (after centring, clipped at 0).

  x: [n, d]; y: [m, d] or None (then y = x and the diagonal is exactly 0). Returns [n, m].
  """
  same = y is None
  y = x if same else y
  mu = jnp.mean(x, axis=0)
  x = x - mu
  y = y - mu
  d2 = (jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :]
        - 2.0 * jnp.matmul(x, y.T, precision=_HI))
  d2 = jnp.maximum(d2, 0.0)
  if same:
    d2 = jnp.fill_diagonal(d2, 0.0, inplace=False)
  return d2


def _knn(d2: jax.Array, k: int, include_self: bool = False) -> tuple[jax.Array, jax.Array]:
  """The k nearest neighbours per row of d2 [n, n]: (squared distances [n, k] ascending, indices [n, k] int32).
  Without ``include_self`` the point itself is excluded; with it, it is forced first."""
  diag = -1.0 if include_self else jnp.inf
  neg, idx = lax.top_k(-jnp.fill_diagonal(d2, diag, inplace=False), k)
  return jnp.maximum(-neg, 0.0), idx.astype(jnp.int32)


def _flip_signs(v: jax.Array) -> jax.Array:
  """Flips each column of v [n, k] so that its largest-magnitude entry is positive."""
  i = jnp.argmax(jnp.abs(v), axis=0)
  s = jnp.sign(v[i, jnp.arange(v.shape[1])])
  return v * jnp.where(s == 0, 1, s).astype(v.dtype)


def _center_kernel(k: jax.Array) -> jax.Array:
  """Double centring (I - 1/n) K (I - 1/n) of k [n, n]."""
  col = jnp.mean(k, axis=0)
  row = jnp.mean(k, axis=1)
  return k - col[None, :] - row[:, None] + jnp.mean(col)


def _top_eigh(k: jax.Array, n_components: int) -> tuple[jax.Array, jax.Array]:
  """Largest ``n_components`` eigenpairs of symmetric k [n, n]: (eigenvalues [m] descending, vectors [n, m])."""
  w, v = jnp.linalg.eigh(k)
  return w[::-1][:n_components], v[:, ::-1][:, :n_components]


def _kernel_embedding(kc: jax.Array, n_components: int) -> KernelPCAResult:
  w, v = _top_eigh(kc, n_components)
  w = jnp.maximum(w, 0.0)
  v = _flip_signs(v)
  return KernelPCAResult(embedding=v * jnp.sqrt(w)[None, :], eigenvalues=w, eigenvectors=v)


def _graph_components(adj: jax.Array) -> jax.Array:
  """Number of connected components of the undirected graph adj [n, n] (bool): min-label propagation with
  pointer jumping in a ``lax.while_loop`` (O(n^2) per sweep)."""
  n = adj.shape[0]
  adj = adj | adj.T
  big = jnp.int32(n)

  def body(state):
    lab, _ = state
    nbr_min = jnp.min(jnp.where(adj, lab[None, :], big), axis=1)
    new = jnp.minimum(lab, nbr_min)
    new = new[new]  # pointer jumping
    return new, jnp.any(new != lab)

  lab, _ = lax.while_loop(lambda s: s[1], body, (jnp.arange(n, dtype=jnp.int32), jnp.array(True)))
  return jnp.sum(lab == jnp.arange(n, dtype=jnp.int32)).astype(jnp.int32)


# ----------------------------------------------------------------------------------------------------------------
# PCA (§9.3.1)
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("n_components", "solver"))
def _pca(x, n_components: int, solver: str) -> PCAResult:
  n, d = x.shape
  r = min(n, d)
  mean = jnp.mean(x, axis=0)
  xc = x - mean
  if solver == "svd":
    _, s, vt = jnp.linalg.svd(xc, full_matrices=False)
  else:
    w, v = jnp.linalg.eigh(jnp.matmul(xc.T, xc, precision=_HI))
    s = jnp.sqrt(jnp.maximum(w[::-1][:r], 0.0))
    vt = v[:, ::-1][:, :r].T
  comps = _flip_signs(vt[:n_components].T).T
  ev_all = s * s / (n - 1)
  total = jnp.sum(ev_all)
  ev = ev_all[:n_components]
  ratio = ev / jnp.where(total > 0, total, 1.0)
  emb = jnp.matmul(xc, comps.T, precision=_HI)
  return PCAResult(embedding=emb, components=comps, explained_variance=ev, explained_variance_ratio=ratio,
                   singular_values=s[:n_components], mean=mean)


def pca(x: jax.Array, n_components: int, *, solver: str = "svd") -> PCAResult:
  """Principal component analysis (seed §9.3.1) by the SVD of the centred data.

  x: [n, d] (n >= 2); n_components: 1 <= k <= min(n, d); solver: "svd" (thin SVD of x - mean, default) or
  "covariance" (eigh of the [d, d] scatter matrix; faster when n >> d). Returns ``PCAResult`` (embedding [n, k]).
  Sign: the largest-magnitude loading of each component is positive (scikit-learn >= 1.5's convention).
  jit-compatible and vmap-able over a leading batch axis of x.
  """
  n, d = _check_2d(x)
  k = _check_int(n_components, "n_components", 1, min(n, d),
                 f"PCA of x with shape {(n, d)} has at most min(n, d) = {min(n, d)} components.")
  _check_choice(solver, "solver", ("svd", "covariance"))
  return _pca(_as_float(x), k, solver)


# ----------------------------------------------------------------------------------------------------------------
# Kernel PCA (§9.4)
# ----------------------------------------------------------------------------------------------------------------

def _kernel_matrix(x, kernel: str, gamma, degree, coef0) -> jax.Array:
  if kernel == "precomputed":
    return x
  if kernel == "rbf":
    return jnp.exp(-gamma * pairwise_sq_dists(x))
  g = jnp.matmul(x, x.T, precision=_HI)
  if kernel == "linear":
    return g
  return (gamma * g + coef0) ** degree  # poly


@functools.partial(jax.jit, static_argnames=("n_components", "kernel", "degree"))
def _kernel_pca(x, gamma, coef0, n_components: int, kernel: str, degree: int) -> KernelPCAResult:
  k = _kernel_matrix(x, kernel, gamma, degree, coef0)
  return _kernel_embedding(_center_kernel(0.5 * (k + k.T)), n_components)


def kernel_pca(x: jax.Array, n_components: int, kernel: str = "rbf", gamma=None, *, degree: int = 3,
               coef0: float = 1.0) -> KernelPCAResult:
  """Kernel PCA (seed §9.4): top eigenvectors of the centred kernel matrix, scaled by sqrt(eigenvalue).

  x: [n, d] (or the kernel matrix [n, n] with ``kernel="precomputed"``); n_components: 1 <= k <= n;
  kernel: "rbf" exp(-gamma ||x - y||^2), "linear" <x, y>, "poly" (gamma <x, y> + coef0)^degree, or
  "precomputed"; gamma: None -> 1 / d (as scikit-learn). Returns ``KernelPCAResult`` (embedding [n, k]).
  Negative eigenvalues (numerical noise or an indefinite kernel) are clipped to 0, giving zero columns.
  O(n^2) memory, O(n^3) time.
  """
  _check_choice(kernel, "kernel", ("rbf", "linear", "poly", "precomputed"))
  n, d = _check_2d(x)
  if kernel == "precomputed" and n != d:
    raise ValueError(f"x must be a square kernel matrix [n, n] with kernel='precomputed'; got shape {(n, d)}.")
  k = _check_int(n_components, "n_components", 1, n, f"kernel PCA of {n} points has at most {n} components.")
  degree = _check_int(degree, "degree", 1, 64, "Use a small positive polynomial degree.")
  gamma = 1.0 / d if gamma is None else gamma
  _check_nonneg_scalar(gamma, "gamma")
  xf = _as_float(x)
  return _kernel_pca(xf, jnp.asarray(gamma, xf.dtype), jnp.asarray(coef0, xf.dtype), k, kernel, degree)


# ----------------------------------------------------------------------------------------------------------------
# Isomap (§9.4)
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("directed",))
def _floyd_warshall(w, directed: bool):
  n = w.shape[0]
  if not directed:
    w = jnp.minimum(w, w.T)
  w = jnp.fill_diagonal(w, jnp.minimum(jnp.diagonal(w), 0.0), inplace=False)

  def pivot(k, dist):
    col = lax.dynamic_slice_in_dim(dist, k, 1, axis=1)  # [n, 1]: i -> k
    row = lax.dynamic_slice_in_dim(dist, k, 1, axis=0)  # [1, n]: k -> j
    return jnp.minimum(dist, col + row)

  return lax.fori_loop(0, n, pivot, w)


def floyd_warshall(graph: jax.Array, *, directed: bool = False) -> jax.Array:
  """All-pairs shortest path lengths by Floyd–Warshall: ``lax.fori_loop`` over the pivot k with the vectorised
  update D = min(D, D[:, k] + D[k, :]).

  graph: [n, n] edge weights, ``inf`` where there is no edge (a 0 off the diagonal is a zero-length edge, unlike
  scipy's dense convention); the diagonal is set to min(graph_ii, 0). ``directed=False`` lets every edge be
  traversed both ways (weight min(g_ij, g_ji)), as scipy's ``shortest_path(directed=False)``. Weights must be
  non-negative (checked on concrete input). Returns [n, n]; ``inf`` for unreachable pairs. O(n^3) time.
  """
  n, m = _check_2d(graph, "graph", min_rows=1)
  if n != m:
    raise ValueError(f"graph must be a square [n, n] weight matrix; got shape {(n, m)}.")
  g = _as_float(graph, "graph")
  if not isinstance(g, jax.core.Tracer):
    gn = np.asarray(g)
    if np.any(np.isnan(gn)) or np.any(gn < 0):
      raise ValueError("graph must hold non-negative edge weights (inf for no edge); got NaN or negative entries.")
  return _floyd_warshall(g, bool(directed))


@functools.partial(jax.jit, static_argnames=("n_neighbors",))
def _isomap_paths(x, n_neighbors: int):
  """kNN graph with Euclidean edge lengths -> geodesic distances [n, n] (inf: unreachable), #components."""
  d2, idx = _knn(pairwise_sq_dists(x), n_neighbors)
  n = x.shape[0]
  w = jnp.full((n, n), jnp.inf, x.dtype).at[jnp.arange(n)[:, None], idx].set(jnp.sqrt(d2))
  dist = _floyd_warshall(w, False)
  # The first reachable node of each row is the smallest index of its component: count the rows that are it.
  first = jnp.argmax(jnp.isfinite(dist), axis=1)
  return dist, jnp.sum(first == jnp.arange(n)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("n_components",))
def _isomap_mds(dist, n_graph_components, n_components: int) -> IsomapResult:
  finite = jnp.isfinite(dist)
  dist = jnp.where(finite, dist, jnp.max(jnp.where(finite, dist, 0.0)))
  res = _kernel_embedding(_center_kernel(-0.5 * dist * dist), n_components)
  return IsomapResult(embedding=res.embedding, eigenvalues=res.eigenvalues, dist_matrix=dist,
                      n_graph_components=n_graph_components)


def isomap(x: jax.Array, n_components: int, n_neighbors: int = 5) -> IsomapResult:
  """Isomap (seed §9.4): kNN graph (Euclidean edge lengths, symmetrised) -> geodesic distances by Floyd–Warshall
  -> classical MDS (kernel PCA of -D^2 / 2), as scikit-learn's ``Isomap(path_method="FW")``.

  x: [n, d]; n_components: 1 <= k <= n; n_neighbors: 1 <= n_neighbors < n (the point itself not counted).
  Returns ``IsomapResult`` (embedding [n, k]). Raises ValueError when the kNN graph is disconnected (scikit-learn
  instead warns and joins the components). O(n^2) memory, O(n^3) time.
  """
  n, _ = _check_2d(x)
  k = _check_int(n_components, "n_components", 1, n, f"isomap of {n} points has at most {n} components.")
  nn = _check_int(n_neighbors, "n_neighbors", 1, n - 1, f"x has only {n} points: use n_neighbors < {n}.")
  dist, n_comp = _isomap_paths(_as_float(x), nn)
  _raise_if_disconnected(n_comp, "isomap", "nearest_neighbors", nn, n)
  return _isomap_mds(dist, n_comp, k)


# ----------------------------------------------------------------------------------------------------------------
# Locally linear embedding (§9.4)
# ----------------------------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("n_components", "n_neighbors"))
def _lle(x, reg, n_components: int, n_neighbors: int) -> LLEResult:
  n = x.shape[0]
  _, idx = _knn(pairwise_sq_dists(x), n_neighbors)
  c = x[idx] - x[:, None, :]  # [n, k, d]
  g = jnp.einsum("nid,njd->nij", c, c, precision=_HI)  # local Gram [n, k, k]
  tr = jnp.trace(g, axis1=1, axis2=2)
  r = jnp.where(tr > 0, reg * tr, reg)
  g = g + r[:, None, None] * jnp.eye(n_neighbors, dtype=x.dtype)
  wts = jnp.linalg.solve(g, jnp.ones((n, n_neighbors, 1), x.dtype))[..., 0]
  wts = wts / jnp.sum(wts, axis=1, keepdims=True)
  i_minus_w = jnp.eye(n, dtype=x.dtype).at[jnp.arange(n)[:, None], idx].add(-wts)
  m = jnp.matmul(i_minus_w.T, i_minus_w, precision=_HI)
  evals, evecs = jnp.linalg.eigh(m)
  emb = _flip_signs(evecs[:, 1:n_components + 1])
  return LLEResult(embedding=emb, eigenvalues=evals[1:n_components + 1], weights=wts, neighbors=idx)


def lle(x: jax.Array, n_components: int, n_neighbors: int = 5, reg: float = 1e-3) -> LLEResult:
  """Standard locally linear embedding (seed §9.4), as scikit-learn's ``LocallyLinearEmbedding(method="standard",
  eigen_solver="dense")``.

  For each point, weights w minimise ||x_i - sum_j w_j x_j||^2 over its n_neighbors nearest other points with
  sum w = 1: solve (G + reg * trace(G) I) w = 1 (G the local Gram matrix; reg alone when trace(G) = 0, i.e.
  duplicated points), normalise. The embedding is the eigenvectors 2..k+1 of M = (I - W)^T (I - W) (the constant
  one is skipped). x: [n, d]; n_components: 1 <= k <= d and k < n; n_neighbors: 1 <= n_neighbors < n;
  reg: >= 0. Returns ``LLEResult``. Use float64. A neighbourhood graph that falls apart gives several ~0
  eigenvalues and a degenerate (finite) embedding; no check is made, as in scikit-learn. O(n^2) memory, O(n^3) time.
  """
  n, d = _check_2d(x)
  k = _check_int(n_components, "n_components", 1, min(d, n - 1),
                 f"LLE needs n_components <= d = {d} (the input dimension) and < n = {n}.")
  nn = _check_int(n_neighbors, "n_neighbors", 1, n - 1, f"x has only {n} points: use n_neighbors < {n}.")
  _check_nonneg_scalar(reg, "reg")
  xf = _as_float(x)
  return _lle(xf, jnp.asarray(reg, xf.dtype), k, nn)


# ----------------------------------------------------------------------------------------------------------------
# Laplace matrix (§9.1), Laplacian eigenmaps (§9.4) and normalized cut (§9.2)
# ----------------------------------------------------------------------------------------------------------------

def _affinity_matrix(x, affinity: str, n_neighbors, gamma) -> jax.Array:
  n = x.shape[0]
  if affinity == "precomputed":
    a = 0.5 * (x + x.T)
  elif affinity == "rbf":
    a = jnp.exp(-gamma * pairwise_sq_dists(x))
  else:
    _, idx = _knn(pairwise_sq_dists(x), n_neighbors, include_self=True)
    c = jnp.zeros((n, n), x.dtype).at[jnp.arange(n)[:, None], idx].set(1.0)
    a = 0.5 * (c + c.T)
  return jnp.fill_diagonal(a, 0.0, inplace=False)


def _normalized_laplacian_eigh(a):
  """Eigen-decomposition of L_sym = I - D^{-1/2} A D^{-1/2} (ascending) and sqrt(degree) (1 for isolated)."""
  deg = jnp.sum(a, axis=1)
  isolated = deg <= 0
  dd = jnp.where(isolated, 1.0, jnp.sqrt(jnp.where(isolated, 1.0, deg)))
  lap = -a / dd[:, None] / dd[None, :]
  lap = jnp.fill_diagonal(lap, jnp.where(isolated, 0.0, 1.0).astype(a.dtype), inplace=False)
  evals, evecs = jnp.linalg.eigh(lap)
  return evals, evecs, dd


@functools.partial(jax.jit, static_argnames=("affinity", "n_neighbors"))
def _affinity_and_components(x, gamma, affinity: str, n_neighbors):
  a = _affinity_matrix(x, affinity, n_neighbors, gamma)
  return a, _graph_components(a > 0)


@functools.partial(jax.jit, static_argnames=("n_components",))
def _spectral_embedding(a, n_graph_components, n_components: int) -> SpectralEmbeddingResult:
  evals, evecs, dd = _normalized_laplacian_eigh(a)
  emb = _flip_signs(evecs[:, :n_components + 1] / dd[:, None])[:, 1:]
  return SpectralEmbeddingResult(embedding=emb, eigenvalues=evals[1:n_components + 1], affinity=a,
                                 n_graph_components=n_graph_components)


def _check_affinity_args(x, affinity, n_neighbors, gamma, default_nn):
  affinity = "nearest_neighbors" if affinity is None else affinity
  _check_choice(affinity, "affinity", ("nearest_neighbors", "rbf", "precomputed"))
  n, d = _check_2d(x)
  if affinity == "precomputed":
    if n != d:
      raise ValueError(f"x must be a square affinity matrix [n, n] with affinity='precomputed'; got shape {(n, d)}.")
    if not isinstance(x, jax.core.Tracer):
      xn = np.asarray(x)
      if np.any(np.isnan(xn)) or np.any(xn < 0):
        raise ValueError("the precomputed affinity must be non-negative (no NaN); got negative or NaN entries.")
  nn = None
  if affinity == "nearest_neighbors":
    nn = default_nn(n) if n_neighbors is None else n_neighbors
    nn = _check_int(nn, "n_neighbors", 2, n, f"n_neighbors counts the point itself: use 2 <= n_neighbors <= {n}.")
  g = 1.0 / d if gamma is None else gamma
  if affinity == "rbf":
    _check_nonneg_scalar(g, "gamma")
  return affinity, n, nn, g


def laplacian_eigenmaps(x: jax.Array, n_components: int, n_neighbors: int | None = None,
                        affinity: str | None = None, *, gamma=None) -> SpectralEmbeddingResult:
  """Laplacian eigenmaps (seed §9.1, §9.4), as scikit-learn's ``SpectralEmbedding``.

  The Laplace matrix of the affinity A (self-loops dropped, degrees D = diag(A 1)) is normalised,
  L_sym = I - D^{-1/2} A D^{-1/2}; its eigenvectors u_1..u_k after the trivial u_0 (eigenvalue 0), mapped back by
  D^{-1/2} (the generalised eigenvectors of L v = lambda D v), are the embedding.

  x: [n, d] points, or the affinity [n, n] with ``affinity="precomputed"`` (symmetrised as (A + A^T) / 2);
  n_components: 1 <= k < n; affinity: None / "nearest_neighbors" (connectivity of the n_neighbors nearest points,
  the point itself included, symmetrised), "rbf" (exp(-gamma ||x - y||^2), gamma None -> 1 / d), "precomputed";
  n_neighbors: None -> max(n // 10, 2). Raises ValueError for a disconnected graph.
  Returns ``SpectralEmbeddingResult``. O(n^2) memory, O(n^3) time.
  """
  affinity, n, nn, g = _check_affinity_args(x, affinity, n_neighbors, gamma, lambda n: max(n // 10, 2))
  k = _check_int(n_components, "n_components", 1, n - 1,
                 f"the trivial eigenvector is dropped: with {n} points use n_components < {n}.")
  xf = _as_float(x)
  a, n_comp = _affinity_and_components(xf, jnp.asarray(g, xf.dtype), affinity, nn)
  _raise_if_disconnected(n_comp, "laplacian_eigenmaps", affinity, nn, n)
  return _spectral_embedding(a, n_comp, k)


@functools.partial(jax.jit, static_argnames=("n_clusters", "n_init", "max_iter"))
def _normalized_cut(key, a, n_graph_components, tol, njw, n_clusters: int, n_init: int, max_iter: int):
  evals, evecs, dd = _normalized_laplacian_eigh(a)
  u = evecs[:, :n_clusters]
  norm = jnp.linalg.norm(u, axis=1, keepdims=True)
  # ``njw`` is a traced flag (both [n, c] embeddings are cheap): one compilation serves both methods
  z = jnp.where(njw, u / jnp.where(norm > 0, norm, 1.0), _flip_signs(u / dd[:, None]))
  km = clustering.kmeans_core(z, n_clusters, key, n_init=n_init, max_iter=max_iter, tol=tol)
  return NormalizedCutResult(labels=km.labels, embedding=z, eigenvalues=evals[:n_clusters], centers=km.centers,
                             inertia=km.inertia, n_graph_components=n_graph_components)


def normalized_cut(x: jax.Array, n_clusters: int, key: jax.Array, *, affinity: str = "rbf", gamma=1.0,
                   n_neighbors: int = 10, method: str = "shi_malik", n_init: int = 10, max_iter: int = 300,
                   tol: float = 1e-4) -> NormalizedCutResult:
  """Normalized-cut spectral clustering (seed §9.2): relaxed min Ncut = bottom eigenvectors of the normalized
  Laplace matrix (§9.1), then k-means in that embedding.

  x: [n, d] points, or the affinity [n, n] with ``affinity="precomputed"``; n_clusters: 2 <= c <= n;
  key: PRNG key for k-means++ seeding; affinity: "rbf" (exp(-gamma ||x - y||^2), gamma default 1.0 as
  scikit-learn's SpectralClustering), "nearest_neighbors" (n_neighbors, the point itself included) or
  "precomputed"; method: "shi_malik" (embedding D^{-1/2} u_0..u_{c-1}, scikit-learn's choice) or "njw" (rows of
  U normalised to unit length); n_init restarts of at most max_iter Lloyd steps (stop when the centre shift
  <= tol * mean feature variance). A disconnected graph is allowed (its components are perfect cuts).
  Returns ``NormalizedCutResult``. O(n^2) memory, O(n^3) time.
  """
  affinity, n, nn, g = _check_affinity_args(x, affinity, n_neighbors, gamma, lambda n: 10)
  c = _check_int(n_clusters, "n_clusters", 2, n, f"x has {n} points: use 2 <= n_clusters <= {n}.")
  _check_choice(method, "method", ("shi_malik", "njw"))
  n_init = _check_int(n_init, "n_init", 1, 10_000, "Use a positive number of k-means restarts.")
  max_iter = _check_int(max_iter, "max_iter", 1, 1_000_000, "Use a positive number of Lloyd iterations.")
  _check_nonneg_scalar(tol, "tol")
  if not (hasattr(key, "shape") and (key.shape == (2,) or jnp.issubdtype(key.dtype, jax.dtypes.prng_key))):
    raise ValueError(f"key must be a jax PRNG key (jax.random.key(0) or PRNGKey(0)); got {key!r}.")
  xf = _as_float(x)
  a, n_comp = _affinity_and_components(xf, jnp.asarray(g, xf.dtype), affinity, nn)
  return _normalized_cut(key, a, n_comp, jnp.asarray(tol, xf.dtype), jnp.asarray(method == "njw"), c, n_init,
                         max_iter)

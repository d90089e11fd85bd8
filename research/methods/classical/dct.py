"""Worked example of the DCT and JPEG quantisation (seed 003 §10): basis images, energy compaction, R-D curve.

1. The 64 basis images U_{k,l} = u_k u_l^T of the orthonormal 8x8 DCT-II (seed §10 "Basis Images of 8x8 DCT").
2. Energy compaction on skimage's grayscale ``camera`` and ``astronaut`` (luma): for 8x8 blocks (level shifted
   by -128 as JPEG), the fraction of the total energy held by the k largest-magnitude DCT coefficients of each
   block, by the first k coefficients in JPEG zig-zag order (a fixed choice, no side information), and by the k
   largest-magnitude pixels of the same block (orthonormal transform: equal totals).
3. JPEG rate-distortion: ``jpeg_quantise`` at IJG qualities 5..95 on 2-3 sample images; rate estimated by the
   zeroth-order entropy of the quantised coefficients (one histogram per frequency position, summed over the 64
   positions, in bits per pixel; no run-length/Huffman coding, so it is an estimate, not a file size) and by the
   number of nonzero coefficients per pixel; distortion by PSNR.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from research.classical import dct
from research.methods.classical import _common


def _zigzag_order(n: int = 8) -> np.ndarray:
  """Flat indices of an n x n block in JPEG zig-zag order."""
  idx = sorted(((i + j, (j if (i + j) % 2 == 0 else i), i, j) for i in range(n) for j in range(n)))
  return np.array([i * n + j for _, _, i, j in idx])


def _blocks(img: np.ndarray) -> np.ndarray:
  h, w = (img.shape[0] // 8) * 8, (img.shape[1] // 8) * 8
  return img[:h, :w].reshape(h // 8, 8, w // 8, 8).transpose(0, 2, 1, 3).reshape(-1, 8, 8)


def _entropy_bits(coef: np.ndarray) -> float:
  """Sum over the 64 frequency positions of the empirical entropy (bits) times the number of blocks."""
  flat = coef.reshape(-1, 64)
  total = 0.0
  for pos in range(64):  # 64 histograms (frequency positions), not a loop over data points
    _, counts = np.unique(flat[:, pos], return_counts=True)
    p = counts / counts.sum()
    total += float(-(p * np.log2(p)).sum()) * flat.shape[0]
  return total


def _luma(rgb: np.ndarray) -> np.ndarray:
  return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict:
  """Write ``dct_basis.png``, ``dct_energy.png``, ``jpeg_rd.png`` into ``workdir``; return the headline numbers."""
  del seed  # deterministic
  skimage_data = _common.data_module("skimage.data", "dct")
  plt = _common.pyplot()

  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  images = {"camera": skimage_data.camera().astype(np.float64), "astronaut": _luma(skimage_data.astronaut())}
  if not quick:
    images["coffee"] = _luma(skimage_data.coffee())
  if quick:
    images = {k: v[128:384, 128:384] for k, v in images.items()}

  # 1. basis images
  C = np.asarray(dct.dct_matrix(8, 2, "ortho"), np.float64)
  basis = np.einsum("ka,lb->klab", C, C)  # U_{k,l}[a, b] = u_k[a] u_l[b]
  fig, axes = plt.subplots(8, 8, figsize=(6, 6))
  for k in range(8):
    for l in range(8):
      axes[k, l].imshow(basis[k, l], cmap="gray", vmin=-0.25, vmax=0.25)
      axes[k, l].axis("off")
  fig.suptitle("8x8 DCT-II basis images U_{k,l} (seed §10)", fontsize=9)
  fig.savefig(os.path.join(workdir, "dct_basis.png"), dpi=80)
  plt.close(fig)

  # 2. energy compaction
  zz = _zigzag_order()
  ks = np.arange(1, 65)
  compaction = {}
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name in ("camera", "astronaut"):
    blocks = _blocks(images[name]) - 128.0
    coef = np.asarray(dct.dctn(blocks, 2, axes=(1, 2), norm="ortho"), np.float64).reshape(-1, 64)
    pix = blocks.reshape(-1, 64)
    total = float((pix ** 2).sum())
    top_dct = np.cumsum(np.sort(coef ** 2, axis=1)[:, ::-1].sum(0)) / total
    top_pix = np.cumsum(np.sort(pix ** 2, axis=1)[:, ::-1].sum(0)) / total
    zig = np.cumsum((coef ** 2).sum(0)[zz]) / total
    compaction[name] = {f"k{k}": {"dct_topk": round(float(top_dct[k - 1]), 4),
                                  "dct_zigzag": round(float(zig[k - 1]), 4),
                                  "pixels_topk": round(float(top_pix[k - 1]), 4)} for k in (1, 4, 8, 16)}
    line, = ax.plot(ks, top_dct, label=f"{name}: DCT top-k")
    ax.plot(ks, zig, "--", color=line.get_color(), label=f"{name}: DCT zig-zag first k")
    ax.plot(ks, top_pix, ":", color=line.get_color(), label=f"{name}: pixels top-k")
  ax.set_xlabel("k (of 64 per 8x8 block)")
  ax.set_ylabel("fraction of energy")
  ax.legend(fontsize=7)
  ax.set_title("energy compaction of the 8x8 DCT", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "dct_energy.png"), dpi=90)
  plt.close(fig)

  # 3. JPEG rate-distortion
  qualities = [10, 50, 90] if quick else list(range(5, 100, 10))
  code = jax.jit(dct.jpeg_quantise)  # quality is traced: one compilation per image shape
  rd = {}
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, img in images.items():
    img = np.clip(np.round(img), 0, 255)
    rows = []
    for q in qualities:
      r = code(img, q)
      coef = np.asarray(r.coefficients)
      rows.append({"quality": q, "psnr_db": round(float(dct.psnr(r.reconstruction, img)), 2),
                   "entropy_bpp": round(_entropy_bits(coef) / img.size, 4),
                   "nonzero_per_pixel": round(int(r.nonzero) / img.size, 4)})
    rd[name] = rows
    ax.plot([r["entropy_bpp"] for r in rows], [r["psnr_db"] for r in rows], "o-", ms=3, label=name)
  ax.set_xlabel("rate estimate (bits / pixel, zeroth-order entropy of quantised coefficients)")
  ax.set_ylabel("PSNR (dB)")
  ax.set_title(f"JPEG quantisation, quality {qualities[0]}..{qualities[-1]}", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "jpeg_rd.png"), dpi=90)
  plt.close(fig)

  return {"energy_compaction": compaction, "rate_distortion": rd, "quick": quick,
          "wall_s": round(time.perf_counter() - t0, 2), "figures": ["dct_basis.png", "dct_energy.png", "jpeg_rd.png"]}

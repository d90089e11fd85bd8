"""Worked example of robust PCA by ADMM with the adaptive penalty (seed 003 §5, §7.1, §7.2).

(a) Image: skimage's ``camera`` (block-averaged to 128x128 quick / 256x256 full, values in [0, 1]) with 10% of the
pixels replaced by salt-and-pepper noise (0 or 1). D = image (rows x columns); L should be the clean image and S
the impulses. A natural image is only approximately low rank, so L is a low-rank approximation of the clean image
(it loses fine texture): we report PSNR(L, clean) next to PSNR(corrupted, clean) and the rank of L, honestly.
(b) Video: a synthetic clip written here (a static textured background plus a bright square moving across it);
frames are the columns of D [pixels, frames]. L = the background (rank 1 ideally), S = the moving foreground.
We report the F1 and IoU of ``|S| > 0.1`` against the true square masks and the relative error of L against the
true background.
"""

from __future__ import annotations

import os
import time

import numpy as np

from research.methods.classical import _common
from research.classical import rpca

_FG_THRESHOLD = 0.1
_TOL = 1e-5  # float32: the relative residual cannot go much below ~1e-7
_EPS2 = 0.1  # §7.2 threshold: the image is only approximately low rank and needs a bolder penalty growth


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
  return float(10 * np.log10(1.0 / np.mean((x - ref) ** 2)))


def _block_mean(img: np.ndarray, size: int) -> np.ndarray:
  f = img.shape[0] // size
  return img[:size * f, :size * f].reshape(size, f, size, f).mean(axis=(1, 3))


def shapes_video(num_frames: int = 40, size: int = 48, square: int = 8, seed: int = 0):
  """Static textured background + a bright square moving on a diagonal-ish path.

  Returns (frames [T, H, W] in [0, 1], background [H, W], masks [T, H, W] bool of the square).
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  background = (0.3 + 0.12 * np.sin(2 * np.pi * 3 * xx) * np.cos(2 * np.pi * 2 * yy) + 0.1 * yy
                + 0.05 * rng.random((size, size)))
  span = size - square
  s = np.arange(num_frames) / max(num_frames - 1, 1)
  r0 = np.round(span * (0.5 + 0.4 * np.sin(2 * np.pi * s))).astype(int)[:, None, None]  # top-left corner per frame
  c0 = np.round(span * s).astype(int)[:, None, None]
  idx = np.arange(size)
  masks = ((idx[None, :, None] >= r0) & (idx[None, :, None] < r0 + square)
           & (idx[None, None, :] >= c0) & (idx[None, None, :] < c0 + square))
  frames = np.where(masks, 1.0, background[None])
  return frames, background, masks


def run(workdir: str, *, seed: int = 0, quick: bool = False) -> dict:
  """Run both examples, write ``rpca_image.png``, ``rpca_video.png``, ``rpca_convergence.png``; return numbers."""
  skimage_data = _common.data_module("skimage.data", "rpca")
  plt = _common.pyplot()

  os.makedirs(workdir, exist_ok=True)
  t0 = time.perf_counter()
  rng = np.random.default_rng(seed)

  # (a) salt-and-pepper corrupted image
  size = 128 if quick else 256
  clean = _block_mean(skimage_data.camera().astype(np.float64) / 255.0, size)
  corrupt_mask = rng.random(clean.shape) < 0.10
  corrupted = np.where(corrupt_mask, (rng.random(clean.shape) < 0.5).astype(np.float64), clean)
  res_img = rpca.rpca_admm(corrupted.astype(np.float32), eps2=_EPS2, max_iter=300, tol=_TOL)
  L_img = np.clip(np.asarray(res_img.L, np.float64), 0, 1)
  S_img = np.asarray(res_img.S)
  detected = np.abs(S_img) > _FG_THRESHOLD
  image = {
      "size": size,
      "psnr_corrupted_db": round(_psnr(corrupted, clean), 2),
      "psnr_L_db": round(_psnr(L_img, clean), 2),
      "rank_L": int(res_img.rank),
      "iterations": int(res_img.num_iter),
      "converged": bool(res_img.converged),
      "impulse_recall": round(float((detected & corrupt_mask).sum() / corrupt_mask.sum()), 4),
  }

  # (b) moving square over a static background
  num_frames, side = (20, 32) if quick else (40, 48)
  frames, background, masks = shapes_video(num_frames, side, square=6 if quick else 8, seed=seed)
  D = frames.reshape(num_frames, -1).T  # [pixels, frames]
  res_vid = rpca.rpca_admm(D.astype(np.float32), eps2=_EPS2, max_iter=300, tol=_TOL)
  L_vid = np.asarray(res_vid.L, np.float64).T.reshape(frames.shape)
  S_vid = np.asarray(res_vid.S, np.float64).T.reshape(frames.shape)
  fg = np.abs(S_vid) > _FG_THRESHOLD
  tp = float((fg & masks).sum())
  precision = tp / max(float(fg.sum()), 1.0)
  recall = tp / float(masks.sum())
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  iou = tp / float((fg | masks).sum())
  bg_true = np.broadcast_to(background, L_vid.shape)
  bg_err = float(np.linalg.norm(L_vid - bg_true) / np.linalg.norm(bg_true))
  video = {
      "frames": num_frames, "size": side,
      "foreground_f1": round(f1, 4), "foreground_iou": round(iou, 4),
      "foreground_precision": round(precision, 4), "foreground_recall": round(recall, 4),
      "background_rel_error": round(bg_err, 5), "rank_L": int(res_vid.rank),
      "iterations": int(res_vid.num_iter), "converged": bool(res_vid.converged),
  }
  # the §7.2 rule against a fixed penalty on the video problem (same tol, capped at the same max_iter)
  fixed = rpca.rpca_admm(D.astype(np.float32), adaptive=False, max_iter=100 if quick else 300, tol=_TOL)
  video["fixed_penalty_iterations"] = int(fixed.num_iter)
  video["fixed_penalty_converged"] = bool(fixed.converged)
  video["fixed_penalty_final_residual"] = float(f"{float(fixed.residual):.3g}")

  figures = ["rpca_image.png", "rpca_video.png", "rpca_convergence.png"]
  fig, axes = plt.subplots(1, 4, figsize=(13, 3.5))
  for ax, im, title in zip(axes, (clean, corrupted, L_img, np.abs(S_img)),
                           ("clean", f"10% salt & pepper ({image['psnr_corrupted_db']} dB)",
                            f"L, rank {image['rank_L']} ({image['psnr_L_db']} dB)", "|S|")):
    ax.imshow(im, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figures[0]), dpi=90)
  plt.close(fig)

  show = np.linspace(0, num_frames - 1, 4).astype(int)
  fig, axes = plt.subplots(3, len(show), figsize=(2.4 * len(show), 7))
  for j, t in enumerate(show):
    for i, (im, name) in enumerate(((frames[t], "frame"), (L_vid[t], "L (background)"), (np.abs(S_vid[t]), "|S|"))):
      axes[i, j].imshow(im, cmap="gray", vmin=0, vmax=1)
      axes[i, j].set_title(f"{name} t={t}", fontsize=8)
      axes[i, j].axis("off")
  fig.suptitle(f"foreground F1 {video['foreground_f1']}, IoU {video['foreground_iou']}", fontsize=9)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figures[1]), dpi=90)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for res, label in ((res_vid, "adaptive penalty (§7.2)"), (fixed, "fixed penalty")):
    k = int(res.num_iter)
    ax.semilogy(np.arange(1, k + 1), np.asarray(res.residuals)[:k], label=label)
  ax.set_xlabel("iteration")
  ax.set_ylabel("||D - L - S||_F / ||D||_F")
  ax.set_title("RPCA on the video clip", fontsize=9)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, figures[2]), dpi=90)
  plt.close(fig)

  return {"image": image, "video": video, "tol": _TOL, "eps2": _EPS2, "quick": quick,
          "wall_s": round(time.perf_counter() - t0, 2),
          "figures": figures}

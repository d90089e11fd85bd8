"""One-off: write tests/ops/data/torchvision_golden.npz with torchvision's outputs and gradients.

Run with an interpreter that has torch + torchvision (never a dependency of this project):

    /work/tvenv/bin/python tests/ops/make_torchvision_golden.py

The arrays are small (< 200 KB); tests/ops/test_torchvision_parity.py compares research.ops against them
without torch. Inputs are stored channels-last, as research.ops takes them.
"""

import os

import numpy as np
import torch
import torchvision

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "torchvision_golden.npz")


def nchw(a):
  return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def main():
  rng = np.random.default_rng(2024)
  d = {"torch": np.array(torch.__version__), "torchvision": np.array(torchvision.__version__)}
  # --- RoIAlign family: varied boxes, some partly / fully outside, tiny and huge ones
  feats = rng.standard_normal((2, 12, 14, 18)).astype(np.float32)
  k = 24
  xy = rng.uniform(-6, 16, size=(k, 2))
  wh = np.exp(rng.uniform(np.log(0.3), np.log(30), size=(k, 2)))
  boxes = (np.concatenate([xy, xy + wh], 1) * 2).astype(np.float32)  # used with spatial_scale 1/2 and 1
  idx = rng.integers(0, 2, k).astype(np.int32)
  rois = torch.from_numpy(np.concatenate([idx[:, None].astype(np.float32), boxes], 1))
  d.update(roi_features=feats, roi_boxes=boxes, roi_idx=idx)
  f = nchw(feats).requires_grad_(True)  # 18 channels for ps_roi_align (2 x 3 x 3)
  f4 = nchw(feats[..., :4]).requires_grad_(True)  # roi_align / roi_pool use the first 4 channels
  for aligned in (True, False):
    for sr in (-1, 1, 2):
      for scale in (1.0, 0.5):
        key = f"roi_align_a{int(aligned)}_sr{sr}_s{scale}"
        out = torchvision.ops.roi_align(f4, rois, (3, 2), scale, sr, aligned)
        g = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
        (gf,) = torch.autograd.grad((out * g).sum(), f4)
        d[key] = nhwc(out)
        d[key + "_g"] = nhwc(g)
        d[key + "_gf"] = nhwc(gf)
  for sr in (-1, 2):
    key = f"ps_roi_align_sr{sr}"
    out = torchvision.ops.ps_roi_align(f, rois, 3, 0.5, sr)
    g = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
    (gf,) = torch.autograd.grad((out * g).sum(), f)
    d[key], d[key + "_g"], d[key + "_gf"] = nhwc(out), nhwc(g), nhwc(gf)
  out = torchvision.ops.roi_pool(f4, rois, (3, 2), 0.5)
  g = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
  (gf,) = torch.autograd.grad((out * g).sum(), f4)
  d["roi_pool"], d["roi_pool_g"], d["roi_pool_gf"] = nhwc(out), nhwc(g), nhwc(gf)
  # --- deformable convolution v2: groups 2, offset_groups 2, stride 1, padding 1, dilation 1
  x = rng.standard_normal((2, 6, 7, 4)).astype(np.float32)
  off = (rng.standard_normal((2, 6, 7, 2 * 2 * 9)) * 1.5).astype(np.float32)
  mask = rng.uniform(size=(2, 6, 7, 2 * 9)).astype(np.float32)
  w = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)  # HWIO, groups=2
  b = rng.standard_normal(6).astype(np.float32)
  args = [nchw(x), nchw(off), torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))), torch.from_numpy(b),
          nchw(mask)]
  args = [a.requires_grad_(True) for a in args]
  out = torchvision.ops.deform_conv2d(args[0], args[1], args[2], args[3], padding=(1, 1), mask=args[4])
  g = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))
  gx, go, gw, gb, gm = torch.autograd.grad((out * g).sum(), args)
  d.update(dcn_x=x, dcn_offset=off, dcn_mask=mask, dcn_weight=w, dcn_bias=b, dcn_out=nhwc(out), dcn_g=nhwc(g),
           dcn_gx=nhwc(gx), dcn_goffset=nhwc(go), dcn_gmask=nhwc(gm), dcn_gweight=gw.numpy().transpose(2, 3, 1, 0),
           dcn_gbias=gb.numpy())
  # --- NMS
  xy = rng.uniform(-100, 100, size=(300, 2))
  wh = rng.uniform(4, 50, size=(300, 2))
  nboxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
  scores = rng.uniform(size=300).astype(np.float32)
  classes = rng.integers(0, 5, 300).astype(np.int32)
  d.update(nms_boxes=nboxes, nms_scores=scores, nms_classes=classes)
  for thr in (0.3, 0.5, 0.7):
    d[f"nms_{thr}"] = torchvision.ops.nms(torch.from_numpy(nboxes), torch.from_numpy(scores), thr).numpy()
    # torchvision's per-class loop; its public batched_nms uses an offset trick here (N*4 <= 4000 on CPU) that
    # shifts class c by c*(max+1) and so mixes classes when coordinates are negative (it keeps 1 box fewer).
    d[f"batched_nms_{thr}"] = torchvision.ops.boxes._batched_nms_vanilla(
        torch.from_numpy(nboxes), torch.from_numpy(scores), torch.from_numpy(classes), thr).numpy()
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, **d)
  print(OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
  main()

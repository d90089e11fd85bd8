"""Writes ``recurrent_torch.npz``: seeded PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN(nonlinearity="tanh")`` runs
(1 and 2 layers, uni- and bidirectional, ``batch_first``; and a padded batch through ``pack_padded_sequence``) with
their weights, inputs, initial states, outputs, final states and the gradients of a fixed scalar loss with respect to
the inputs and initial states. Read by ``tests/models/test_recurrent_torch_parity.py``; torch is needed only here.

    /work/torchenv/bin/python tests/models/golden/make_recurrent_golden.py

Everything is float64. Case ``<lstm|gru|rnn>_l<layers>_<uni|bi>[_packed]``, keys ``<case>.<name>``:

* ``<case>.param.<torch state_dict name>``: the weights (``torch.manual_seed`` of the case index, torch's default
  uniform init scaled by 2 so that the gates leave their linear range);
* ``x`` [B, T, D], ``h0`` [L * dirs, B, H] (and ``c0`` for the LSTM), ``lengths`` [B] (packed cases; T otherwise);
* ``out`` [B, T, dirs * H] (packed cases: zeros past each length, as ``pad_packed_sequence`` returns them), ``h_n``
  (and ``c_n``);
* ``g_out``, ``g_h`` (and ``g_c``): fixed random cotangents of the loss ``sum(out * g_out) + sum(h_n * g_h)
  (+ sum(c_n * g_c))`` (``g_out`` is zero past each length); ``dx``, ``dh0`` (and ``dc0``) its gradients.
"""

from __future__ import annotations

import os

import numpy as np
import torch

B, T, D, H = 3, 7, 5, 4
LENGTHS = (7, 4, 1)  # the packed cases; pack_padded_sequence(enforce_sorted=False) sorts them itself
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recurrent_torch.npz")


def make_case(index: int, mode: str, layers: int, bidirectional: bool, packed: bool) -> dict[str, np.ndarray]:
  torch.manual_seed(index)
  cls = {"LSTM": torch.nn.LSTM, "GRU": torch.nn.GRU, "RNN_TANH": torch.nn.RNN}[mode]
  kw = {"nonlinearity": "tanh"} if mode == "RNN_TANH" else {}
  m = cls(D, H, num_layers=layers, bidirectional=bidirectional, batch_first=True, **kw).double()
  with torch.no_grad():
    for p in m.parameters():
      p.mul_(2.0)
  assert m.mode == mode
  dirs = 2 if bidirectional else 1
  rng = np.random.default_rng(1000 + index)
  x = torch.tensor(rng.normal(size=(B, T, D)), requires_grad=True)
  h0 = torch.tensor(0.5 * rng.normal(size=(layers * dirs, B, H)), requires_grad=True)
  c0 = torch.tensor(0.5 * rng.normal(size=(layers * dirs, B, H)), requires_grad=True)
  lengths = np.array(LENGTHS if packed else (T,) * B)
  valid = np.arange(T)[None, :] < lengths[:, None]
  g_out = rng.normal(size=(B, T, dirs * H)) * valid[..., None]
  g_h, g_c = rng.normal(size=(layers * dirs, B, H)), rng.normal(size=(layers * dirs, B, H))
  state = (h0, c0) if mode == "LSTM" else h0
  if packed:
    seq = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(lengths), batch_first=True, enforce_sorted=False)
    out, fin = m(seq, state)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=T)
  else:
    out, fin = m(x, state)
  h_n, c_n = fin if mode == "LSTM" else (fin, None)
  loss = (out * torch.tensor(g_out)).sum() + (h_n * torch.tensor(g_h)).sum()
  if c_n is not None:
    loss = loss + (c_n * torch.tensor(g_c)).sum()
  loss.backward()
  case = {f"param.{k}": v.detach().numpy().copy() for k, v in m.state_dict().items()}
  case.update(x=x.detach().numpy(), h0=h0.detach().numpy(), lengths=lengths, out=out.detach().numpy(),
              h_n=h_n.detach().numpy(), g_out=g_out, g_h=g_h, dx=x.grad.numpy(), dh0=h0.grad.numpy(),
              loss=np.array(loss.item()))
  if mode == "LSTM":
    case.update(c0=c0.detach().numpy(), c_n=c_n.detach().numpy(), g_c=g_c, dc0=c0.grad.numpy())
  return case


def main():
  torch.set_default_dtype(torch.float64)
  arrays = {"torch_version": np.array(torch.__version__)}
  index = 0
  for mode in ("LSTM", "GRU", "RNN_TANH"):
    for layers, bidirectional, packed in ((1, False, False), (2, False, False), (1, True, False), (2, True, False),
                                          (2, True, True), (1, False, True)):
      kind = mode.lower().replace("_tanh", "")
      name = f"{kind}_l{layers}_{'bi' if bidirectional else 'uni'}{'_packed' if packed else ''}"
      for k, v in make_case(index, mode, layers, bidirectional, packed).items():
        arrays[f"{name}.{k}"] = v
      index += 1
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT}: {len(arrays)} arrays, {os.path.getsize(OUT) / 1024:.1f} KB, torch {torch.__version__}")


if __name__ == "__main__":
  main()

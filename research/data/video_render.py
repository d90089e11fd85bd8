"""Procedural renderer of ``shapes_video`` clips (pure numpy, no TFDS dependency).

A clip shows ONE actor (a shape of ``scenes_render.SHAPE_NAMES``) performing one periodic action of
:data:`VIDEO_ACTIONS` on a static textured background, with 0-``max_distractors`` distractor shapes moving
periodically behind it. Written for temporal alignment (Temporal Cycle Consistency, Dwibedi et al. 2019, §4: per
frame phase labels of an action) and for dense video tasks (instance / semantic maps, exact optical flow).

Motion model. Every object ``k`` is an affine map of its unit shape frame ``u = (u, v)`` (``v`` down; the shapes of
``scenes_render.SHAPES`` live in the unit disc) to pixel coordinates ``x = (x, y)``:
``x = A_k(t) @ u + b_k(t)``. The actor's map comes from its action's pose at phase ``phase(t) = (phase0 + rate * t)
mod 1``: ``pose = (tx, ty, angle, sx, sy)`` in units of the actor's radius ``r``, applied about the action's pivot
``P`` (unit frame): ``x = base + r * (T + R(angle + angle0) @ diag(sx, sy) @ (u - P) + P)``. Distractors move on
ellipses and spin at constant speed. The forward flow of a pixel ``x`` showing object ``k`` at frame ``t`` is
``A_k(t+1) @ A_k(t)^-1 @ (x - b_k(t)) + b_k(t+1) - x`` -- exact, also for the last frame (the motion is defined
beyond the clip); background pixels have zero flow (static camera). Objects are textured with a linear colour
gradient in their own frame, so ``frame[t+1](x + flow[t](x)) == frame[t](x)`` on an object's pixels (up to uint8
rounding and pixel sampling), which is what the tests check.

Actions (:data:`VIDEO_ACTIONS`): keyframed poses, eased (smoothstep) between keyframes, periodic
(the last keyframe equals the first); a PHASE (event interval) is the span between two named keyframes. Each
phase's poses differ from the others' (the trajectory is a loop, not a back-and-forth), so a single frame pins its
phase down up to the ease-in/ease-out near keyframes.

Coordinates follow ``scenes_render``: pixel (row ``i``, column ``j``) is the unit square ``[j, j+1) x [i, i+1)``;
objects are sampled at pixel centres.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from research.data import scenes_render as scenes
from research.data.scenes_render import COLOR_NAMES, COLORS, SHAPE_NAMES, SHAPES

# Shapes whose orientation reads clearly (a disc cannot show rotation); the actor is one of them.
ACTOR_SHAPES = ("square", "triangle", "star", "cross", "ellipse", "bar", "crescent", "heart", "arrow")
_REACH = 1.25  # every shape lies within this radius of its centre in the unit frame
GRADIENT = 22.0  # texture: colour changes by up to this much per unit of u or v (in each channel)


@dataclasses.dataclass(frozen=True)
class Action:
  """A periodic action: ``keyframes`` (phase, pose) with ``pose = (tx, ty, angle, sx, sy)`` (radius units,
  radians), phase 0 first, closing at phase 1 with the first pose; ``phases[i]`` names the interval
  ``[keyframes[i].phase, keyframes[i+1].phase)``; ``pivot`` (u, v) the point rotations/scalings act about."""
  name: str
  phases: tuple[str, ...]
  keyframes: tuple[tuple[float, tuple[float, float, float, float, float]], ...]
  pivot: tuple[float, float] = (0.0, 0.0)

  def __post_init__(self):
    ts = [k[0] for k in self.keyframes]
    if ts[0] != 0.0 or ts[-1] != 1.0 or any(b <= a for a, b in zip(ts, ts[1:])):
      raise ValueError(f"action {self.name}: keyframe phases must rise from 0 to 1, got {ts}")
    if self.keyframes[0][1] != self.keyframes[-1][1]:
      raise ValueError(f"action {self.name}: the last keyframe must repeat the first (periodic motion)")
    if len(self.phases) != len(self.keyframes) - 1 or not 2 <= len(self.phases) <= 4:
      raise ValueError(f"action {self.name}: {len(self.phases)} phase names for {len(self.keyframes) - 1} "
                       f"intervals (2-4 phases)")

  @property
  def boundaries(self) -> np.ndarray:
    """float64 [P + 1]: phase values where each phase starts (and 1.0)."""
    return np.array([k[0] for k in self.keyframes])

  def phase_label(self, phase: np.ndarray) -> np.ndarray:
    """int64 [...]: index of the phase interval holding ``phase`` (values in [0, 1))."""
    return np.clip(np.searchsorted(self.boundaries, np.mod(phase, 1.0), side="right") - 1, 0, len(self.phases) - 1)

  def pose(self, phase: np.ndarray) -> np.ndarray:
    """float64 [..., 5]: ``(tx, ty, angle, sx, sy)`` at ``phase`` (any real; taken mod 1), smoothstep-eased."""
    phase = np.mod(np.asarray(phase, np.float64), 1.0)
    i = self.phase_label(phase)
    bounds = self.boundaries
    poses = np.array([k[1] for k in self.keyframes], np.float64)
    s = (phase - bounds[i]) / (bounds[i + 1] - bounds[i])
    e = (s * s * (3 - 2 * s))[..., None]
    return poses[i] * (1 - e) + poses[i + 1] * e


_REST = (0.0, 0.0, 0.0, 1.0, 1.0)
VIDEO_ACTIONS: dict[str, Action] = {a.name: a for a in (
    # pour: lift the vessel, tip it over (pouring), set it upright away from the start, put it back down.
    Action("pour", ("lift", "tilt", "untilt", "lower"),
           ((0.0, _REST), (0.25, (0.0, -1.3, 0.0, 1.0, 1.0)), (0.5, (0.9, -1.3, 1.9, 1.0, 1.0)),
            (0.75, (0.9, -0.5, 0.0, 1.0, 1.0)), (1.0, _REST)), pivot=(0.0, -0.5)),
    # jump: squash (crouch), fly up and forward stretched, land squashed further on, walk back.
    Action("jump", ("crouch", "rise", "fall", "recover"),
           ((0.0, _REST), (0.2, (0.0, 0.0, 0.0, 1.3, 0.65)), (0.45, (0.8, -2.0, 0.0, 0.8, 1.25)),
            (0.7, (1.6, 0.0, 0.0, 1.25, 0.7)), (1.0, _REST)), pivot=(0.0, 1.0)),
    # wave: raise and swing one way, swing through to the other side, come back down.
    Action("wave", ("raise", "swing", "return"),
           ((0.0, _REST), (0.3, (0.0, -0.6, 1.0, 1.0, 1.0)), (0.65, (0.0, -0.6, -1.0, 1.0, 1.0)),
            (1.0, _REST)), pivot=(0.0, 1.0)),
)}
ACTION_NAMES: tuple[str, ...] = tuple(VIDEO_ACTIONS)
MAX_PHASES = max(len(a.phases) for a in VIDEO_ACTIONS.values())


@dataclasses.dataclass(frozen=True)
class ClipConfig:
  """What a clip looks like. ``cycles``: (min, max) action cycles per clip (phase rate = cycles / num_frames);
  ``max_start_phase``: start phase uniform in ``[0, max_start_phase)``; ``actor_size``: (min, max) actor diameter
  as a fraction of the image side; ``position_jitter``: fraction of the free room (where the whole trajectory stays
  inside the image) over which the actor's base position varies (0: centred)."""
  image_size: int = 64
  num_frames: int = 32
  cycles: tuple[float, float] = (0.7, 1.5)
  max_start_phase: float = 1.0
  max_distractors: int = 3
  actor_size: tuple[float, float] = (0.2, 0.3)
  position_jitter: float = 1.0

  def __post_init__(self):
    if self.image_size < 16:
      raise ValueError(f"image_size={self.image_size} is too small: use >= 16 px")
    if self.num_frames < 2:
      raise ValueError(f"num_frames={self.num_frames}: a clip needs >= 2 frames")
    if not 0 < self.cycles[0] <= self.cycles[1]:
      raise ValueError(f"cycles={self.cycles} must be (min, max) with 0 < min <= max")
    if not 0 <= self.max_start_phase <= 1:
      raise ValueError(f"max_start_phase={self.max_start_phase} must lie in [0, 1]")
    if not 0 <= self.position_jitter <= 1:
      raise ValueError(f"position_jitter={self.position_jitter} must lie in [0, 1]")
    if not 0 < self.actor_size[0] <= self.actor_size[1] < 0.5:
      raise ValueError(f"actor_size={self.actor_size} must be (min, max) fractions with 0 < min <= max < 0.5")


@dataclasses.dataclass
class Clip:
  """One rendered clip of ``T`` frames with ``N`` objects (object 0 is the actor, 1.. the distractors; the
  actor is drawn last, in front).

  frames:      uint8 [T, H, W, 3]
  instance:    uint8 [T, H, W]: 0 background, k + 1 where object k is visible
  semantic:    uint8 [T, H, W]: 0 background, labels[k] + 1 where object k is visible
  flow:        float32 [T, H, W, 2]: forward flow (dx, dy) in px from frame t to t + 1
  phase:       float32 [T] in [0, 1);  phase_label: int64 [T] phase index of the action
  action:      index into ACTION_NAMES;  rate: cycles per frame;  start_phase: phase of frame 0
  labels:      int64 [N] shape classes (SHAPE_NAMES);  colors: int64 [N] (COLOR_NAMES)
  affine:      float64 [T + 1, N, 2, 3]: ``[A | b]`` of every object per frame (frame T: for the flow)
  """
  frames: np.ndarray
  instance: np.ndarray
  semantic: np.ndarray
  flow: np.ndarray
  phase: np.ndarray
  phase_label: np.ndarray
  action: int
  rate: float
  start_phase: float
  labels: np.ndarray
  colors: np.ndarray
  affine: np.ndarray


def clip_rng(seed: int, index: int) -> np.random.Generator:
  """The generator of clip ``index`` of a split with ``seed`` (clips are independent of each other)."""
  return np.random.default_rng([int(seed), int(index)])


def _rot(a: np.ndarray) -> np.ndarray:
  """[..., 2, 2] rotation matrices (x right, y down: positive angles turn clockwise on screen)."""
  c, s = np.cos(a), np.sin(a)
  return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def actor_affine(action: Action, phase: np.ndarray, base: np.ndarray, radius: float, angle0: float) -> np.ndarray:
  """float64 [..., 2, 3] ``[A | b]`` of the actor at ``phase`` [...] (see the module docstring)."""
  pose = action.pose(phase)
  tx, ty, ang, sx, sy = np.moveaxis(pose, -1, 0)
  lin = _rot(ang + angle0) @ (np.eye(2) * np.stack([sx, sy], -1)[..., None, :])  # R @ diag(s)
  pivot = np.asarray(action.pivot, np.float64)
  offset = np.stack([tx, ty], -1) + pivot - lin @ pivot
  a = radius * lin
  b = np.asarray(base, np.float64) + radius * offset
  return np.concatenate([a, b[..., None]], axis=-1)


def _trajectory_extent(action: Action) -> tuple[np.ndarray, np.ndarray]:
  """(lo, hi) [2] of the actor's reach over a cycle, in radius units relative to ``base`` (angle0 = 0)."""
  aff = actor_affine(action, np.linspace(0, 1, 65), np.zeros(2), 1.0, 0.0)
  reach = _REACH * np.linalg.norm(aff[..., :2], axis=-1)  # [65, 2]: row norms bound |A u| per axis for |u|<=R
  centre = aff[..., 2]
  return (centre - reach).min(0), (centre + reach).max(0)


def _paint(image, instance, flow, aff_t, aff_next, label: int, colour: np.ndarray, gradient: np.ndarray, ident: int):
  """Paints one object (affine ``aff_t`` [2, 3] now, ``aff_next`` at t + 1) in place; returns its mask window."""
  h, w = instance.shape
  a, b = aff_t[:, :2], aff_t[:, 2]
  half = _REACH * np.abs(a).sum(axis=1)  # |A u|_inf bound per axis for |u|_inf <= R
  x0, x1 = max(0, int(np.floor(b[0] - half[0]))), min(w, int(np.ceil(b[0] + half[0])) + 1)
  y0, y1 = max(0, int(np.floor(b[1] - half[1]))), min(h, int(np.ceil(b[1] + half[1])) + 1)
  if x1 <= x0 or y1 <= y0:
    return
  xs = np.arange(x0, x1, dtype=np.float64) + 0.5
  ys = np.arange(y0, y1, dtype=np.float64) + 0.5
  px = np.broadcast_to(xs[None, :], (y1 - y0, x1 - x0))
  py = np.broadcast_to(ys[:, None], (y1 - y0, x1 - x0))
  inv = np.linalg.inv(a)
  dx, dy = px - b[0], py - b[1]
  u = inv[0, 0] * dx + inv[0, 1] * dy
  v = inv[1, 0] * dx + inv[1, 1] * dy
  m = SHAPES[SHAPE_NAMES[label]](u, v)
  if not m.any():
    return
  a2, b2 = aff_next[:, :2], aff_next[:, 2]
  fx = a2[0, 0] * u + a2[0, 1] * v + b2[0] - px
  fy = a2[1, 0] * u + a2[1, 1] * v + b2[1] - py
  col = colour + gradient[0] * u[..., None] + gradient[1] * v[..., None]
  image[y0:y1, x0:x1][m] = col[m]
  instance[y0:y1, x0:x1][m] = ident
  flow[y0:y1, x0:x1, 0][m] = fx[m]
  flow[y0:y1, x0:x1, 1][m] = fy[m]


def render_clip(rng: np.random.Generator, config: ClipConfig = ClipConfig(), *, action: int | None = None) -> Clip:
  """One random clip (see the module docstring); deterministic given the state of ``rng``. ``action``: force
  the action index (default: uniform over ACTION_NAMES)."""
  h = w = int(config.image_size)
  t_count = int(config.num_frames)
  act_idx = int(rng.integers(len(ACTION_NAMES))) if action is None else int(action)
  if not 0 <= act_idx < len(ACTION_NAMES):
    raise ValueError(f"action={action} is not an index into {ACTION_NAMES}")
  act = VIDEO_ACTIONS[ACTION_NAMES[act_idx]]
  cycles = float(rng.uniform(*config.cycles))
  rate = cycles / t_count
  start = float(rng.uniform(0, config.max_start_phase)) if config.max_start_phase > 0 else 0.0
  phase_all = start + rate * np.arange(t_count + 1)  # frame T only for the flow of frame T - 1

  # actor: shape, size, base position keeping its whole trajectory (mostly) inside the image
  radius = float(rng.uniform(*config.actor_size)) * h / 2
  angle0 = float(rng.uniform(-0.25, 0.25))
  lo, hi = _trajectory_extent(act)
  lo, hi = lo * radius, hi * radius
  centred = np.array([w - hi[0] - lo[0], h - hi[1] - lo[1]]) / 2  # the trajectory's box centred in the image
  slack = np.abs(np.array([w - hi[0] + lo[0], h - hi[1] + lo[1]])) / 2 * config.position_jitter
  base = centred + rng.uniform(-1, 1, size=2) * slack
  actor_label = SHAPE_NAMES.index(ACTOR_SHAPES[int(rng.integers(len(ACTOR_SHAPES)))])

  n_dis = int(rng.integers(0, config.max_distractors + 1))
  labels = np.concatenate([[actor_label], rng.integers(0, len(SHAPE_NAMES), n_dis)]).astype(np.int64)
  background, _ = scenes._background(rng, h, w)
  noise_amplitude = rng.uniform(4, 12)
  background = np.clip(background + rng.uniform(-noise_amplitude, noise_amplitude, (h, w, 3)), 0, 255)
  # colours: the first of a random order that contrasts with the background's mean colour (as scenes_render)
  dist = np.linalg.norm(COLORS - background.reshape(-1, 3).mean(0), axis=1)
  colors = np.zeros(1 + n_dis, np.int64)
  for k in range(1 + n_dis):
    order_k = rng.permutation(len(COLOR_NAMES))
    ok = order_k[dist[order_k] >= 110]
    colors[k] = ok[0] if ok.size else int(np.argmax(dist))
  gradients = rng.uniform(-GRADIENT, GRADIENT, size=(1 + n_dis, 2, 3))
  base_colours = 60.0 + 0.53 * COLORS[colors].astype(np.float64)  # [68, 190]: the gradient never clips

  affine = np.zeros((t_count + 1, 1 + n_dis, 2, 3))
  affine[:, 0] = actor_affine(act, phase_all, base, radius, angle0)
  ts = np.arange(t_count + 1, dtype=np.float64)
  for k in range(1, 1 + n_dis):  # distractors: elliptic orbits and constant spin
    r_k = float(rng.uniform(0.08, 0.16)) * h
    centre = rng.uniform(0.15 * h, 0.85 * h, size=2)
    amp = rng.uniform(0.05, 0.25, size=2) * h
    omega = rng.uniform(0.5, 1.5) * 2 * np.pi / t_count * rng.choice([-1, 1])
    ph = rng.uniform(0, 2 * np.pi, size=2)
    spin = rng.uniform(-0.15, 0.15)
    aspect = rng.uniform(0.8, 1.2)
    lin = r_k * _rot(rng.uniform(0, 2 * np.pi) + spin * ts) @ np.diag([aspect, 1 / aspect])
    pos = centre + amp * np.stack([np.cos(omega * ts + ph[0]), np.sin(omega * ts + ph[1])], -1)
    affine[:, k] = np.concatenate([lin, pos[..., None]], -1)

  frames = np.zeros((t_count, h, w, 3), np.uint8)
  instance = np.zeros((t_count, h, w), np.uint8)
  flow = np.zeros((t_count, h, w, 2), np.float32)
  order = list(range(1, 1 + n_dis)) + [0]  # distractors behind, the actor in front
  for t in range(t_count):
    image = background.copy()
    for k in order:
      _paint(image, instance[t], flow[t], affine[t, k], affine[t + 1, k], int(labels[k]), base_colours[k],
             gradients[k], k + 1)
    frames[t] = np.clip(np.round(image), 0, 255).astype(np.uint8)
  lut = np.concatenate([[0], labels + 1]).astype(np.uint8)
  phase = np.mod(phase_all[:t_count], 1.0)
  return Clip(frames=frames, instance=instance, semantic=lut[instance], flow=flow,
              phase=phase.astype(np.float32), phase_label=act.phase_label(phase).astype(np.int64), action=act_idx,
              rate=rate, start_phase=start, labels=labels, colors=colors, affine=affine)


def bilinear_sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Samples ``image`` [H, W, C] at pixel coordinates (``x``, ``y``) [...] (pixel centres at k + 0.5).

  Returns ``(values [..., C] float64, inside [...] bool)``; ``inside`` is False where a corner falls outside.
  """
  h, w = image.shape[:2]
  gx, gy = np.asarray(x) - 0.5, np.asarray(y) - 0.5
  x0, y0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
  inside = (x0 >= 0) & (y0 >= 0) & (x0 + 1 < w) & (y0 + 1 < h)
  x0c, y0c = np.clip(x0, 0, w - 2), np.clip(y0, 0, h - 2)
  fx, fy = (gx - x0c)[..., None], (gy - y0c)[..., None]
  im = image.astype(np.float64)
  val = (im[y0c, x0c] * (1 - fx) * (1 - fy) + im[y0c, x0c + 1] * fx * (1 - fy) + im[y0c + 1, x0c] * (1 - fx) * fy
         + im[y0c + 1, x0c + 1] * fx * fy)
  return val, inside


def describe_clip(clip: Clip) -> dict:
  """A JSON-friendly summary: action, phase names, rate, start phase, objects (class, colour, role)."""
  act = VIDEO_ACTIONS[ACTION_NAMES[clip.action]]
  return {"action": act.name, "phases": list(act.phases), "rate": round(float(clip.rate), 5),
          "start_phase": round(float(clip.start_phase), 5),
          "objects": [{"class": SHAPE_NAMES[int(l)], "color": COLOR_NAMES[int(c)], "actor": k == 0}
                      for k, (l, c) in enumerate(zip(clip.labels, clip.colors))]}


def phase_names(action: int | str) -> tuple[str, ...]:
  """The phase names of an action (index into ACTION_NAMES, or its name)."""
  name = ACTION_NAMES[action] if isinstance(action, (int, np.integer)) else action
  if name not in VIDEO_ACTIONS:
    raise ValueError(f"unknown action {action!r}; choose from {ACTION_NAMES}")
  return VIDEO_ACTIONS[name].phases


__all__ = ["ACTION_NAMES", "ACTOR_SHAPES", "Action", "Clip", "ClipConfig", "MAX_PHASES", "VIDEO_ACTIONS",
           "actor_affine", "bilinear_sample", "clip_rng", "describe_clip", "phase_names", "render_clip"]

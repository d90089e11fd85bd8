"""Drawing detections: shapes, mask blending, score threshold, PNG grids."""

import numpy as np
import pytest
from PIL import Image

from research import fileio
from research.data.draw import MASK_ALPHA, class_color, draw_detections, image_grid, save_grid


def _scene():
  image = np.full((60, 80, 3), 100, np.uint8)
  boxes = np.array([[5, 25, 25, 45], [45, 20, 70, 50]], np.float32)
  masks = np.zeros((2, 60, 80), np.uint8)
  masks[0, 30:40, 8:18] = 1
  masks[1, 25:40, 50:65] = 1
  return image, boxes, np.array([0, 3]), np.array([0.93, 0.2]), masks


def test_shape_dtype_and_scale():
  image, boxes, labels, scores, masks = _scene()
  out = draw_detections(image, boxes, labels, scores, masks=masks, class_names=["cat", "b", "c", "dog"])
  assert out.shape == image.shape and out.dtype == np.uint8
  out3 = draw_detections(image, boxes, labels, scores, masks=masks, scale=3)
  assert out3.shape == (180, 240, 3) and out3.dtype == np.uint8
  np.testing.assert_array_equal(image, 100)  # input untouched


def test_mask_pixels_take_the_class_colour():
  image, boxes, labels, scores, masks = _scene()
  out = draw_detections(image, boxes, labels, scores, masks=masks, scale=2)
  want = np.round((1 - MASK_ALPHA) * 100 + MASK_ALPHA * np.asarray(class_color(0))).astype(np.uint8)
  inner = out[2 * 32:2 * 38, 2 * 10:2 * 16].reshape(-1, 3)  # inside mask 0, away from the box outline and text
  assert (inner == want).all()
  assert (out[2 * 55:, 2 * 2:2 * 4] == 100).all()  # background far from any detection unchanged


def test_below_threshold_not_drawn():
  image, boxes, labels, scores, masks = _scene()
  out = draw_detections(image, boxes, labels, scores, masks=masks)
  assert (out[15:55, 42:75] == 100).all()  # detection 1 (score 0.2): no mask, box or text
  assert (out[25:46, 5] != 100).all()  # detection 0's left box edge is drawn
  out = draw_detections(image, boxes, labels, scores, masks=masks, score_threshold=0.1)
  assert (out[15:55, 42:75] != 100).any()
  np.testing.assert_array_equal(draw_detections(image, boxes, labels, scores, score_threshold=0.99), image)
  np.testing.assert_array_equal(draw_detections(image, np.zeros((0, 4)), [], []), image)


def test_padded_masks_are_cropped_and_bad_shapes_raise():
  image, boxes, labels, scores, masks = _scene()
  padded = np.zeros((2, 64, 96), bool)
  padded[:, :60, :80] = masks
  np.testing.assert_array_equal(draw_detections(image, boxes, labels, scores, masks=padded),
                                draw_detections(image, boxes, labels, scores, masks=masks))
  with pytest.raises(ValueError):
    draw_detections(image, boxes, labels, scores, masks=masks[:, :30])


def test_save_grid_png(tmp_path, monkeypatch):
  image, boxes, labels, scores, masks = _scene()
  ims = [draw_detections(image, boxes, labels, scores, masks=masks), image, image[:20]]
  path = tmp_path / "sub" / "grid.png"
  save_grid(ims, path, cols=2)
  back = np.asarray(Image.open(path))
  np.testing.assert_array_equal(back, image_grid(ims, cols=2))
  assert back.shape == (2 * 62 + 2, 2 * 82 + 2, 3)
  np.testing.assert_array_equal(back[2:62, 2:82], ims[0])
  np.testing.assert_array_equal(back[64:84, 2:82], ims[2])
  assert [p.name for p in path.parent.iterdir()] == ["grid.png"]  # no temporary file left
  monkeypatch.setattr(fileio, "main_process", lambda: False)
  save_grid(ims, tmp_path / "other.png")
  assert not (tmp_path / "other.png").exists()

"""Tests for ntk_tf.nad_plots: closed-form spectra, scaling, and a written PNG."""

from absl.testing import absltest
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from ntk_tf import nad_plots


class NadPlotsTest(absltest.TestCase):

  def test_spectrum_of_a_cosine_peaks_at_its_frequency(self):
    h, w, c = 8, 8, 3
    rows = np.arange(h)[:, None, None]
    direction = np.cos(2 * np.pi * 2 * rows / h) * np.ones((h, w, c))  # 2 cycles along H.
    spectrum = nad_plots.nad_spectrum(direction)
    # |FFT| of cos is (H W / 2) at frequencies +-2 along H; zero frequency at (4, 4).
    want = np.zeros((h, w))
    want[4 + 2, 4] = want[4 - 2, 4] = h * w / 2
    np.testing.assert_allclose(spectrum, want, atol=1e-9)

  def test_image_is_rescaled_to_unit_interval(self):
    direction = np.arange(12.0).reshape(2, 2, 3) - 5
    image = nad_plots.nad_image(direction)
    np.testing.assert_allclose(image, np.arange(12.0).reshape(2, 2, 3) / 11)
    np.testing.assert_allclose(nad_plots.nad_image(np.ones((2, 2, 1))), 0.5)

  def test_writes_png(self):
    directions = np.random.default_rng(0).standard_normal((3, 8, 8, 3))
    path = nad_plots.plot_nads(directions, self.create_tempdir().full_path + "/nads.png",
                               singular_values=[3.0, 2.0, 1.0], title="test")
    data = path.read_bytes()
    self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
    self.assertGreater(len(data), 1000)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, r"Received: directions.shape=\(8, 8, 3\)"):
      nad_plots.plot_nads(np.zeros((8, 8, 3)), "/tmp/unused.png")
    with self.assertRaisesRegex(ValueError, r"Received: len\(singular_values\)=1"):
      nad_plots.plot_nads(np.zeros((2, 8, 8, 3)), "/tmp/unused.png", singular_values=[1.0])


if __name__ == "__main__":
  absltest.main()

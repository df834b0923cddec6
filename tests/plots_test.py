"""Tests for ntk_tf.experiments.plots: NAD spectra in closed form, PNGs, no global backend."""

import os
import subprocess
import sys

from absl.testing import absltest
import numpy as np

from tests import test_util  # pylint: disable=unused-import
from ntk_tf.experiments import plots as nad_plots


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

  def test_drawing_leaves_the_global_backend_alone(self):
    # In a fresh process whose user chose the "svg" backend: import, draw, then look.
    code = ("import numpy as np, matplotlib\n"
            "from ntk_tf.experiments import plots\n"
            f"plots.plot_nad_alignment(np.arange(1.0, 5.0), {self.create_tempdir().full_path!r} + '/a.png')\n"
            "print(matplotlib.rcParams['backend'])\n")
    env = dict(os.environ, MPLBACKEND="svg", TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    self.assertEqual(out[-1], "svg")  # matplotlib.use("Agg") at import would make it "agg"

  def test_every_experiment_figure_is_a_png(self):
    root = self.create_tempdir().full_path
    rows = [{"model": "mlp", "kind": k, "index": j, "test_acc": 0.5 + 0.01 * j,
             "steps_to_loss": None if j == 4 else 10 * j, "l2_distance": 1.0 * j,
             "cosine_distance": 0.1 * j} for k in ("network", "linearized") for j in (1, 2, 4)]
    rows.append({"model": "mlp", "kind": "network", "index": None, "test_acc": 0.7,
                 "steps_to_loss": 5, "l2_distance": 1.0, "cosine_distance": 0.1})
    summary = [{"model": "mlp", "kind": "network", "train_size": n, "test_acc_mean": 0.6,
                "test_acc_std": 0.01, "l2_distance_mean": 2.0, "l2_distance_std": 0.1}
               for n in (10, 20)]
    paths = [
        nad_plots.plot_test_accuracy(rows, root + "/f2.png"),
        nad_plots.plot_training_metrics(rows, root + "/f3.png"),
        nad_plots.plot_sample_size(summary, root + "/f5.png"),
        nad_plots.plot_energy({"mlp / cifar2": [(0, 0.2), (2, 0.5)]}, 5, root + "/f6.png"),
        nad_plots.plot_alignment(np.ones(4), np.arange(1.0, 5.0), (0, 2), "t", root + "/f7.png", 3),
        nad_plots.plot_late_training({"mlp": {"epoch": np.arange(3), "train_loss": np.ones(3),
                                              "test_acc": np.ones(3)}}, 3, root + "/f8.png"),
        nad_plots.plot_pretraining([(0, 0.5), (1, 0.6)], 0.7, "mlp", 3, root + "/f9.png"),
        nad_plots.plot_nad_accuracy([{"j": 1, "network_test_acc": 0.9, "linear_test_acc": 0.8}],
                                    "mlp", root + "/f4.png"),
    ]
    for path in paths:
      self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n", path)

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, r"Received: directions.shape=\(8, 8, 3\)"):
      nad_plots.plot_nads(np.zeros((8, 8, 3)), "/tmp/unused.png")
    with self.assertRaisesRegex(ValueError, r"Received: len\(singular_values\)=1"):
      nad_plots.plot_nads(np.zeros((2, 8, 8, 3)), "/tmp/unused.png", singular_values=[1.0])


if __name__ == "__main__":
  absltest.main()

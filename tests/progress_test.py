"""Tests for ntk_tf.ntk.progress: counts, rate, ETA, terminal bar and log lines."""

import io
from unittest import mock

from absl import logging
from absl.testing import absltest

from tests import test_util  # pylint: disable=unused-import
from ntk_tf.ntk import progress


class _Tty(io.StringIO):

  def isatty(self):
    return True


class ProgressTest(absltest.TestCase):

  def test_bar_on_terminal(self):
    stream = _Tty()
    with mock.patch.object(progress.time, "monotonic", side_effect=[0.0] + [2.0] * 20):
      with progress.Progress(4, desc="gram", unit="blocks", stream=stream) as bar:
        bar.update()
        bar.update()
    text = stream.getvalue()
    self.assertIn("gram 2/4 blocks [ 50%] 1 blocks/s ETA 00:02", text)
    self.assertIn("[###############...............]", text)
    self.assertTrue(text.endswith("\n"))

  def test_logs_when_not_a_terminal(self):
    stream = io.StringIO()
    with mock.patch.object(logging, "info") as info:
      with progress.Progress(3, desc="job", initial=1, stream=stream, log_every_s=1e9) as bar:
        bar.update()
        bar.update()
    self.assertEqual(stream.getvalue(), "")
    # First update logs (no earlier line), the last one logs because the job is done.
    self.assertEqual(info.call_count, 2)
    self.assertIn("job 3/3", info.call_args[0][1])

  def test_resumed_units_do_not_count_for_rate(self):
    with mock.patch.object(progress.time, "monotonic", side_effect=[0.0, 10.0, 10.0, 10.0]):
      bar = progress.Progress(100, initial=90, enabled=False)
      bar.update(5)
      self.assertAlmostEqual(bar.rate, 0.5)
      self.assertAlmostEqual(bar.eta_s, 10.0)

  def test_disabled_is_silent(self):
    stream = _Tty()
    with progress.Progress(2, enabled=False, stream=stream) as bar:
      bar.update(2)
    self.assertEqual(stream.getvalue(), "")


if __name__ == "__main__":
  absltest.main()

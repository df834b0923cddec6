"""Tests of the shared experiment steps (ntk_tf/experiments/pipeline.py, fields.py)."""

import os
import pathlib
from unittest import mock

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np

import ntk_tf
from ntk_tf import data as data_lib
from ntk_tf import validation
from ntk_tf.experiments import fields
from ntk_tf.experiments import pipeline
from ntk_tf.experiments import workdir


def _config(**overrides):
  config = ml_collections.ConfigDict({
      "experiment": "test", "variant": "smoke", "models": ("mlp",), "activation": "relu",
      "model_kwargs": {"mlp": {"width": 4}}, "model_seed": 0, "dataset": "cifar2",
      "train_size": 10, "test_size": 5, "data_seed": 1, "recipe": "PAPER_CIFAR2",
      "optimizer": "sgd", "epochs": None, "learning_rate": None, "batch_size": None,
      "gram": {"block_size": 4, "implementation": "auto", "dtype": "float32", "cache_dir": None}})
  for key, value in overrides.items():
    config[key] = value
  return config


def _read_blocks(config):
  """The shared blocks of `config`, in the order an experiment reads them."""
  return (fields.read(pipeline.Common, config), pipeline.read_models(config),
          fields.read(pipeline.DataSpec, config, datasets=data_lib.DATASET_NAMES),
          fields.read(pipeline.GramSpec, config.gram, label="config.gram"))


class SettingsTest(parameterized.TestCase):

  def test_values(self):
    config = _config(epochs=3, optimizer="adam")
    common, (spec,), data, _ = _read_blocks(config)
    self.assertEqual(common.recipe, ntk_tf.PAPER_ADAM.replace(epochs=3))
    self.assertEqual(spec, pipeline.ModelSpec("mlp", "relu", {"width": 4}, 0))
    self.assertEqual((data.num_train, data.num_test, data.seed), (10, 5, 1))
    self.assertEqual(fields.int_set((5, 1, 3), "config.x", low=1), (1, 3, 5))  # sorted
    self.assertEqual(fields.names(("lenet,mlp",), "config.models", ("mlp", "lenet")),
                     ("lenet", "mlp"))  # order kept

  def test_gram_cache_dir_default_follows_the_environment(self):
    with mock.patch.dict(os.environ, {"NTK_TF_CACHE_DIR": "/some/cache"}):
      self.assertEqual(_read_blocks(_config())[3].cache_dir, "/some/cache/grams")
    with mock.patch.dict(os.environ, {"HOME": "/nonexistent/u"}):
      os.environ.pop("NTK_TF_CACHE_DIR", None)
      self.assertEqual(_read_blocks(_config())[3].cache_dir, "/nonexistent/u/.cache/ntk_tf/grams")

  @parameterized.named_parameters(
      ("model", {"models": ("vgg",)}, r"config.models holds unknown names \['vgg'\]"),
      ("repeat", {"models": ("mlp", "mlp")}, r"config.models must not repeat"),
      ("activation", {"activation": "elu"}, r"config.activation.*activation='elu'"),
      ("train_size", {"train_size": 50_001}, r"config.train_size.*\[1, 50000\].*50001"),
      ("recipe", {"recipe": "FAST"}, r"config.recipe.*recipe='FAST'"),
      ("override", {"learning_rate": -1.0}, r"learning_rate=-1.0"),
      ("block_size", {"gram": {"block_size": 0, "implementation": "auto", "dtype": "float32",
                               "cache_dir": None}}, r"config.gram.block_size.*block_size=0"),
      ("dtype", {"gram": {"block_size": 4, "implementation": "auto", "dtype": "float16",
                          "cache_dir": None}}, r"config.gram.dtype.*float16"),
  )
  def test_errors_name_the_field(self, overrides, message):
    config = _config(**overrides)
    with self.assertRaisesRegex(ValueError, message):
      _read_blocks(config)

  def test_int_lists(self):
    with self.assertRaisesRegex(ValueError, r"config.e entries must lie in \[0, 2\]"):
      fields.int_set((0, 3), "config.e", low=0, high=2)
    with self.assertRaisesRegex(ValueError, r"config.e must not repeat"):
      fields.int_set((1, 1), "config.e", low=0)
    with self.assertRaisesRegex(ValueError, r"config.e must hold ints"):
      fields.int_set((1, True), "config.e", low=0)


class TrainTaskTest(absltest.TestCase):

  def _task(self):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3, 3, 1)).astype(np.float32)
    y = np.where(x[:, 0, 0, 0] > 0, 1, -1)
    return pipeline.TaskData(x[:8], y[:8], x[8:], y[8:])

  def test_finished_task_returns_its_result_and_other_settings_refuse(self):
    data = self._task()
    recipe = ntk_tf.PAPER_SGD.replace(epochs=2, batch_size=4)
    spec = pipeline.ModelSpec("mlp", "tanh", {"width": 4}, 0)
    task_dir = pathlib.Path(self.create_tempdir().full_path) / "task"
    first = pipeline.train_task(spec.build((3, 3, 1)), data, recipe=recipe, seed=1,
                                task_dir=task_dir, fingerprint="a")
    self.assertFalse((task_dir / "state").exists())
    # An independent run of ntk_tf.train gives the same history.
    direct = ntk_tf.train(spec.build((3, 3, 1)), data.x_train, data.y_train, x_test=data.x_test,
                          y_test=data.y_test, recipe=recipe, seed=1, progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    np.testing.assert_equal(strip(first.history), strip(direct.history))  # NaN == NaN here
    with mock.patch.object(ntk_tf.training, "train", side_effect=AssertionError("retrained")):
      again = pipeline.train_task(spec.build((3, 3, 1)), data, recipe=recipe, seed=1,
                                  task_dir=task_dir, fingerprint="a")
    np.testing.assert_equal(again.history, first.history)
    before = sorted(p.name for p in task_dir.rglob("*"))
    with self.assertRaisesRegex(validation.ConflictError, "would replace the folder"):
      pipeline.train_task(spec.build((3, 3, 1)), data, recipe=recipe, seed=2,
                          task_dir=task_dir, fingerprint="b")
    self.assertEqual(sorted(p.name for p in task_dir.rglob("*")), before)  # Kept.
    self.assertEqual((task_dir / "fingerprint.txt").read_text(), "a")

  def test_fresh_dir_names_the_changed_setting_and_keeps_files_without_a_stamp(self):
    path = pathlib.Path(self.create_tempdir().full_path) / "task"
    pipeline.fresh_dir(path, workdir.fingerprint({"seed": 1, "epochs": 2}))
    with self.assertRaisesRegex(validation.ConflictError, r"\(epochs: 2 -> 3\)"):
      pipeline.fresh_dir(path, workdir.fingerprint({"seed": 1, "epochs": 3}))
    pipeline.fresh_dir(path, workdir.fingerprint({"epochs": 2, "seed": 1}))  # Same: resumes.
    stray = pathlib.Path(self.create_tempdir().full_path) / "user"
    stray.mkdir()
    (stray / "notes.txt").write_text("mine")
    with self.assertRaisesRegex(validation.ConflictError, "not recorded"):
      pipeline.fresh_dir(stray, "a")
    self.assertEqual((stray / "notes.txt").read_text(), "mine")
    empty = pathlib.Path(self.create_tempdir().full_path)  # A killed start left it empty.
    self.assertEqual(pipeline.fresh_dir(empty, "a"), empty)


if __name__ == "__main__":
  absltest.main()

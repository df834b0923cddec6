"""Tests of the settings reader (ntk_tf/experiments/fields.py)."""

import dataclasses
from typing import Optional, Tuple

from absl.testing import absltest
import ml_collections

from ntk_tf import validation
from ntk_tf.experiments import fields


@dataclasses.dataclass(frozen=True)
class _Inner:
  size: int = fields.setting(validation.check_positive_int)
  name: str = fields.setting(validation.check_choice, choices=lambda s: s.names)


def _span(config):
  return config["low"], config["high"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Settings:
  inner: _Inner = fields.block(_Inner, key="inner", names=("a", "b"))
  span: Tuple[int, int] = fields.block(_span)
  seed: int = fields.setting(validation.check_non_negative_int, key="the_seed", default=7)
  epochs: Tuple[int, ...] = fields.setting(fields.int_set, low=0, high=lambda s: s.inner.size)
  limit: Optional[int] = fields.setting(fields.optional(validation.check_positive_int))


def _config(**overrides):
  config = ml_collections.ConfigDict({"inner": {"size": 3, "name": "b"}, "low": 1, "high": 2,
                                      "epochs": (3, 0), "limit": None})
  for key, value in overrides.items():
    config[key] = value
  return config


class ReadTest(absltest.TestCase):

  def test_fields_in_order_with_blocks_bounds_and_defaults(self):
    settings = fields.read(_Settings, _config())
    self.assertEqual(settings, _Settings(inner=_Inner(3, "b"), span=(1, 2), seed=7,
                                         epochs=(0, 3), limit=None))
    config = _config(limit=4)
    with config.unlocked():
      config.the_seed = 0
    self.assertEqual(fields.read(_Settings, config).seed, 0)
    self.assertEqual(fields.read(_Settings, config).limit, 4)

  def test_errors_name_the_field_and_the_value(self):
    with self.assertRaisesRegex(ValueError, r"config.inner.size must be a positive int. "
                                r"Received: config.inner.size=0"):
      fields.read(_Settings, _config(inner={"size": 0, "name": "a"}))
    with self.assertRaisesRegex(ValueError, r"config.inner.name must be one of \('a', 'b'\)"):
      fields.read(_Settings, _config(inner={"size": 3, "name": "c"}))
    # The bound of `epochs` is the inner size read before it.
    with self.assertRaisesRegex(ValueError, r"config.epochs entries must lie in \[0, 3\]. "
                                r"Received: epochs=\[4\]"):
      fields.read(_Settings, _config(epochs=(4,)))
    with self.assertRaisesRegex(ValueError, r"config.limit must be a positive int"):
      fields.read(_Settings, _config(limit=0))

  def test_a_required_field_missing_from_the_config_is_a_key_error(self):
    config = _config()
    with config.unlocked():
      del config["epochs"]
    with self.assertRaises(KeyError):
      fields.read(_Settings, config)

  def test_every_field_must_say_how_it_is_read(self):

    @dataclasses.dataclass(frozen=True)
    class Plain:
      size: int

    with self.assertRaisesRegex(TypeError, "Plain.size is not a fields.setting"):
      fields.read(Plain, {"size": 1})


class ChecksTest(absltest.TestCase):

  def test_at_most_says_what_the_maximum_is(self):
    self.assertEqual(fields.at_most(3, "config.top_k", maximum=3), 3)
    with self.assertRaisesRegex(ValueError, r"^config.top_k must be <= train_size=3. "
                                r"Received: top_k=4$"):
      fields.at_most(4, "config.top_k", maximum=3, bound="train_size={maximum}")
    with self.assertRaisesRegex(ValueError, r"config.top_k must be a positive int"):
      fields.at_most(0, "config.top_k", maximum=3)

  def test_names_sizes_and_numbers(self):
    self.assertEqual(fields.names("mlp, lenet", "config.models", ("mlp", "lenet")),
                     ("mlp", "lenet"))
    with self.assertRaisesRegex(ValueError, r"config.models must be a non-empty list of names"):
      fields.names((), "config.models", ("mlp",))
    self.assertIsNone(fields.optional_size(None, "config.train_size", 10))
    with self.assertRaisesRegex(ValueError, r"config.train_size must be None or an int in "
                                r"\[1, 10\]. Received: train_size=11"):
      fields.optional_size(11, "config.train_size", 10)
    self.assertEqual(fields.positive_number(2, "config.eps"), 2.0)
    with self.assertRaisesRegex(ValueError, r"config.eps must be a positive number. "
                                r"Received: eps=nan"):
      fields.positive_number(float("nan"), "config.eps")


if __name__ == "__main__":
  absltest.main()

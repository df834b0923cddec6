"""Deprecated: the NAD figures (Fig. 10) moved to `ntk_tf.experiments.plots`.

`nad_image`, `nad_spectrum` and `plot_nads` are kept here for one release; they
no longer select matplotlib's backend at import.
"""

import warnings

from ntk_tf.experiments.plots import nad_image
from ntk_tf.experiments.plots import nad_spectrum
from ntk_tf.experiments.plots import plot_nads

warnings.warn("ntk_tf.nad_plots is deprecated; use ntk_tf.experiments.plots "
              "(nad_image, nad_spectrum, plot_nads).", DeprecationWarning, stacklevel=2)

__all__ = ["nad_image", "nad_spectrum", "plot_nads"]

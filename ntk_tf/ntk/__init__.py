"""ntk_tf.ntk: the empirical NTK Gram, computed block by block by one of several algorithms.

    Theta(x1, x2) = J(x1) J(x2)^T   [N1, N2],   one [B, B] block at a time

From the public door to the code that computes a block:
  gram.ntk_gram                      the block loop (checks, blocks, progress)
  gram._IMPLEMENTATION_TO_BLOCK_FN   the table: `NtkImplementation` member -> make_block_fn
  <implementation>.make_block_fn     (model, dtype, block_size, **options) -> BlockFn

Modules, one job each:
  implementation       the `NtkImplementation` and `MatmulEngine` enums, the BlockFn
                       protocol, the option checks
  gram                 `ntk_gram`, `make_block_fn` and the table; blocks and their order
  jacobian_block       JACOBIAN, the reference: per-example Jacobians, J_a J_b^T
  structured/          STRUCTURED: per-layer structured derivatives (a sub-package)
  ntk_vector_products  NTK_VECTOR_PRODUCTS, and `NtkOperator` (Theta v without Theta)
  auto                 AUTO: STRUCTURED or JACOBIAN by a FLOP estimate
  output_kernel        the kernels of a K-logit model (full, diagonal, trace, pseudo)
  block_size           the peak memory of one block per implementation; the default B
  engine_cache         the matmul engine AUTO uses on the machine at hand (a pin, a cache)
  gram_store           `GramStore`: an on-disk, resumable Gram
  gram_store_format    its files, checksums, log and lock
  progress             blocks done, rate and ETA

The XLA-compiled block ops (`jit_compile=True`) live in the top-level `ops/`.
"""

from ntk_tf.ntk.gram import make_block_fn
from ntk_tf.ntk.gram import ntk_gram
from ntk_tf.ntk.gram_store import GramStore
from ntk_tf.ntk.implementation import BlockFn
from ntk_tf.ntk.implementation import MatmulEngine
from ntk_tf.ntk.implementation import NtkImplementation
from ntk_tf.ntk.ntk_vector_products import NtkOperator

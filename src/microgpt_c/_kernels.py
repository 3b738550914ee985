"""Each C kernel, callable on NumPy arrays (float64 or float32), for testing.

The kernels are compiled into :mod:`microgpt_c._core` (one copy of the C core
and of its thread setting); this module names them.  Arrays marked OUT are
written (forward) or accumulated into (backward, ``+=``), IN arrays are read;
shapes are checked before the C call and the GIL is released around it.
``force_variant(op, variant)`` forces a named variant of an op (matmul:
token_lanes / wT / gemm; attention: rows / query_lanes / channel_lanes; float64
adam: plain / quiet, the exact path for tiny moments) where it
applies, "auto" restores the rule; ``attention_variant`` tells which runs;
``fp_env`` / ``set_fp_env`` / ``team_fp_envs`` read and set the threads'
floating-point control words (the tests of the flush-to-zero policy).
"""
from ._core import (adam_update, attention_backward, attention_forward, attention_variant,
                    crossentropy_softmax_backward, crossentropy_softmax_forward,
                    encoder_backward, encoder_forward, force_variant, fp_env, matmul_backward,
                    matmul_forward, relu_backward, relu_forward, residual_backward,
                    residual_forward, rmsnorm_backward, rmsnorm_forward, set_fp_env,
                    team_fp_envs)

__all__ = ["encoder_forward", "encoder_backward", "rmsnorm_forward", "rmsnorm_backward",
           "matmul_forward", "matmul_backward", "attention_forward", "attention_backward",
           "relu_forward", "relu_backward", "residual_forward", "residual_backward",
           "crossentropy_softmax_forward", "crossentropy_softmax_backward", "adam_update",
           "force_variant", "attention_variant", "fp_env", "set_fp_env", "team_fp_envs"]

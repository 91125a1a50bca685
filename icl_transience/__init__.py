"""icl_transience: training dynamics of in-context learning (JAX/Flax).

Importing the package asks XLA for deterministic GPU kernels
(--xla_gpu_deterministic_ops=true; the scatter-adds of embedding and
cross-entropy gradients otherwise use atomics, so two runs, or a run and its
resumption, would differ). XLA reads its flags when JAX first starts a
backend, so this holds for every program that imports the package before
using a device; set the flag yourself (e.g. =false) to choose otherwise. CPU
and TPU results are unaffected.
"""
import os

if "xla_gpu_deterministic_ops" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_gpu_deterministic_ops=true").strip()

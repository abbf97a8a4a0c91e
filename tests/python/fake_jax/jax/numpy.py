"""The stand-in jax.numpy: ones() and bfloat16 (see jax/__init__.py)."""
import jax

bfloat16 = "bfloat16"
float32 = "float32"


def ones(shape, dtype=float32):
    return jax.Array(shape, dtype, jax.local_devices()[0])

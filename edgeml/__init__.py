"""edgeml: the compiler. A lazy Tensor over a small primitive op set, fused into OpenCL kernels."""
from edgeml.tensor import Tensor

__version__ = "0.1.0"
__all__ = ["Tensor"]

"""What the Triton kernels share: interpreter detection, the launch wrapper and the shared-memory budget."""
import torch
import triton
from torch.library import wrap_triton
from triton.runtime.autotuner import Autotuner, Heuristics

try:
    from triton.runtime.interpreter import InterpretedFunction
except ImportError:  # a Triton build without the interpreter
    InterpretedFunction = ()


@triton.jit
def _probe():
    pass


# TRITON_INTERPRET=1 must be set before triton is imported; triton.jit then builds CPU-interpreted kernels.
INTERPRET = isinstance(_probe, InterpretedFunction)


def launcher(kernel, traceable=True):
    """The callable to index with a grid: the raw kernel in the interpreter or when not traceable (eager calls
    that skip torch.library's layer), else torch.library's traceable wrapper (inside a triton_op).

    In the interpreter an autotuned kernel is unwrapped to its jit function (there is no GPU to time configs on);
    the caller then passes the block sizes itself.
    """
    if INTERPRET:
        while isinstance(kernel, (Autotuner, Heuristics)):
            kernel = kernel.fn
        return kernel
    return wrap_triton(kernel) if traceable else kernel


def shared_memory_bytes(device) -> int:
    """Opt-in shared memory per block of a CUDA device (227 KiB on H100/H200, 163 KiB on A100, 99 KiB on sm86/89)."""
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "shared_memory_per_block_optin", 99 * 1024)

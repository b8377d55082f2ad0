"""Elementwise activations by their transformers / diffusers config names (`hidden_act`, `act_fn`).

Each formula is the one transformers' ACT2FN (transformers/activations.py) computes for that name, written the
same way, so float32 results agree to rounding: e.g. "gelu_new" is the Python tanh formula with torch.pow, while
"gelu_pytorch_tanh" is torch's fused tanh approximation. diffusers' get_activation names (silu, swish, mish,
gelu, relu) are a subset with the same functions.
"""
import math

import torch
import torch.nn.functional as F

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def quick_gelu(x):
    """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation."""
    return x * torch.sigmoid(1.702 * x)


def gelu_new(x):
    """The tanh approximation as Google BERT / OpenAI GPT compute it (transformers' NewGELUActivation)."""
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_python_tanh(x):
    """The tanh approximation, multiplied in the order of transformers' GELUTanh._gelu_tanh_python."""
    return x * 0.5 * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3.0))))


def gelu_fast(x):
    """transformers' FastGELUActivation: the tanh approximation with the constant rounded to 0.7978845608."""
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def gelu_python(x):
    """Exact GELU through erf, in Python (transformers' GELUActivation._gelu_python)."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def gelu_accurate(x):
    """transformers' AccurateGELUActivation (MEGA): the tanh approximation, integer exponent."""
    return 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * torch.pow(x, 3))))


def laplace(x, mu=0.707107, sigma=0.282095):
    """transformers' LaplaceActivation (MEGA): the normal CDF at (x - mu) / sigma."""
    return 0.5 * (1.0 + torch.erf((x - mu).div(sigma * math.sqrt(2.0))))


ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_10": lambda x: torch.clip(F.gelu(x), -10, 10),
    "gelu_accurate": gelu_accurate,
    "gelu_fast": gelu_fast,
    "gelu_new": gelu_new,
    "gelu_python": gelu_python,
    "gelu_python_tanh": gelu_python_tanh,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "hardswish": F.hardswish,
    "laplace": laplace,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),  # nn.LeakyReLU's default slope
    "linear": lambda x: x,
    "mish": F.mish,
    "quick_gelu": quick_gelu,
    "relu": F.relu,
    "relu2": lambda x: torch.square(F.relu(x)),
    "relu6": F.relu6,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "sqrtsoftplus": lambda x: F.softplus(x).sqrt(),
    "swish": F.silu,
    "tanh": torch.tanh,
}

# ACT2FN entries that are modules with weights of their own: a checkpoint stores them (e.g. "mlp.act_fn.weight").
LEARNED = {"prelu": "nn.PReLU's learned slope", "xielu": "xIELU's learned alpha_p / alpha_n"}

# In-place forms for the VAE's fused GroupNorm -> activation -> conv input (no temporary of the activation).
_INTO = {
    "silu": torch.ops.aten.silu.out,
    "swish": torch.ops.aten.silu.out,
    "gelu": torch.ops.aten.gelu.out,
    "mish": torch.ops.aten.mish.out,
    "relu": lambda x, out: torch.clamp_min(x, 0, out=out),
}


def activation_into(name, x, out):
    """Write ACTIVATIONS[name](x) into `out` (same shape); returns out."""
    if name in _INTO:
        return _INTO[name](x, out=out)
    return out.copy_(ACTIVATIONS[name](x))


def check_activation(name, field="hidden_act", error=ValueError, names=None):
    """Raise `error` naming the field unless `name` is one of `names` (default: every entry of ACTIVATIONS)."""
    names = tuple(ACTIVATIONS) if names is None else tuple(names)
    if name in names:
        return name
    if name in LEARNED:
        raise error(f"{field} {name!r} is an activation with weights ({LEARNED[name]}); only parameter-free "
                    "activations are supported")
    raise error(f"{field} {name!r} is not supported; expected one of {', '.join(names)}")

from framepack_native.models.clip import CLIPTextEncoder  # noqa: F401
from framepack_native.models.llama import LlamaTextEncoder  # noqa: F401
from framepack_native.models.siglip import SiglipVisionEncoder  # noqa: F401
from framepack_native.models.transformer import FramePackTransformer  # noqa: F401
from framepack_native.models.vae import HunyuanVideoVAE  # noqa: F401

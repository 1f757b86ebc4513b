"""Where and in which precision training runs: device, AMP dtype, grad scaler, autocast."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from pipeline.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 (with a grad scaler); off on CPU unless asked."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    # including_emulation=False: pre-Ampere GPUs "support" bf16 only by emulation (slow);
    # they get fp16 with a grad scaler instead.
    if amp == "bf16" or (
        device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    ):
        return torch.bfloat16
    return torch.float16


def use_fast_cuda_kernels(device: torch.device) -> None:
    """cuDNN autotuning for the fixed input size, unless train.deterministic asked for
    repeatable kernels (autotuning picks by timing); TF32 tensor cores for whatever runs in
    fp32 (amp=off, or the ops autocast keeps in fp32)."""
    if device.type != "cuda":
        return
    if not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def grad_scaler(amp_dtype: torch.dtype | None, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 on CUDA needs loss scaling to keep small gradients from flushing to zero;
    bf16 has fp32's exponent range and needs none."""
    if amp_dtype == torch.float16 and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()

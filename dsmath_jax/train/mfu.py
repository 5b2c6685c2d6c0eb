"""Model FLOPs utilisation: achieved training FLOPs against the devices' peak (PaLM, Chowdhery et al. 2022, App. B)."""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per device (vendor data sheets). A TPU "device" is one chip (v4/v5p: megacore).
PEAK_BF16_FLOPS = {
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12, "a10": 125e12, "v100": 125e12,
    "tpu v6": 918e12, "tpu v5p": 459e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5": 459e12,
    "tpu v4": 275e12, "tpu v3": 123e12,
}


def peak_flops(device: jax.Device | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of a device, or None when unknown (e.g. CPU)."""
    device = device or jax.devices()[0]
    kind = device.device_kind.lower()
    for name, flops in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])):
        if name in kind:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_second: float, num_devices: int | None = None,
        device: jax.Device | None = None) -> float | None:
    """Fraction of the devices' peak that `tokens_per_second` at `flops_per_token` achieves."""
    peak = peak_flops(device)
    if peak is None:
        return None
    return flops_per_token * tokens_per_second / (peak * (num_devices or jax.device_count()))

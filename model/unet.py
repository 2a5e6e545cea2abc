"""The noise predictor ε_θ(x_t, t, y): the UNet of DDPM (Ho et al. 2020, Appendix B).

A sinusoidal embedding of t (and optionally a learned embedding of the class y) is added inside
every residual block; self-attention runs at the low resolutions; each level of the way down is
joined to the way up by skip connections. The class embedding has one extra row, the "null"
label, which training uses for label dropout and sampling for classifier-free guidance.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

PREDICTIONS = ("epsilon", "v")
# w is embedded like a timestep, scaled so that the range of guidance weights in use (0 … 10) spreads
# over the frequencies as t's 0 … 1000 do
GUIDANCE_EMBEDDING_SCALE = 100.0


@dataclass
class UNetConfig:
    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (7,)
    dropout: float = 0.1
    num_classes: int = 0  # 0: unconditional
    num_heads: int = 1
    groups: int = 32  # GroupNorm groups, capped at the channel count
    # guidance-distilled students (Meng et al. 2023) take the guidance weight w as an input
    guidance_input: bool = False
    # what the network predicts: "epsilon" (DDPM) or "v" = √ᾱ ε - √(1-ᾱ) x_0 (distilled students)
    prediction: str = "epsilon"

    def __post_init__(self):
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.in_channels < 1 or self.image_size < 4 or self.base_channels < 1 or self.num_res_blocks < 0:
            raise ValueError(f"invalid UNet config: {self}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {self.prediction!r}; choose one of {PREDICTIONS}")
        if self.image_size % 2 ** (len(self.channel_mults) - 1):
            raise ValueError(
                f"image_size {self.image_size} cannot be halved {len(self.channel_mults) - 1} times "
                f"(channel_mults {self.channel_mults})"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> UNetConfig:
        if unknown := set(d) - set(cls.__dataclass_fields__):
            raise ValueError(f"unknown UNet config keys: {sorted(unknown)}")
        return cls(**d)


# The configurations this project uses by name.
PRESETS: dict[str, dict] = {
    # the shipped CPU demo models (0.69M parameters): a guided DDIM-50 of 16 images in about a second on 2 CPU cores
    "tiny": dict(base_channels=16, channel_mults=(1, 2, 4), num_res_blocks=1, attention_resolutions=(7,), dropout=0.1),
    # the shipped CPU CIFAR-10 model (2.2M parameters): DDPM's four levels at a quarter of its width, attention
    # at 8×8 only (at 16×16 it cost a fifth of a training step on the CPU)
    "cifar-cpu": dict(
        base_channels=32, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(8,), dropout=0.0
    ),
    "small": dict(base_channels=64, channel_mults=(1, 2, 2), num_res_blocks=2, attention_resolutions=(7,), dropout=0.1),
    # DDPM's CIFAR-10 model: 35.7M parameters
    "ddpm-cifar10": dict(
        base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,), dropout=0.1
    ),
    # DDPM's 64×64 (CelebA-HQ/LSUN-style, shallower) model
    "ddpm-64": dict(
        base_channels=128, channel_mults=(1, 1, 2, 2, 4), num_res_blocks=2, attention_resolutions=(16,), dropout=0.0
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The Transformer's sinusoidal position embedding of each t (DDPM, Appendix B)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with at most `groups` groups of at least 3 channels. With one channel a group it
    would be InstanceNorm, which subtracts each channel's mean and so erases the embedding that
    the residual blocks add as a per-channel bias."""
    num_groups = max((g for g in range(1, groups + 1) if channels % g == 0 and channels // g >= 3), default=1)
    return nn.GroupNorm(num_groups, channels)


def _zeroed(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = _norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = _norm(out_ch, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zeroed(nn.Conv2d(out_ch, out_ch, 3, padding=1))  # each block starts as the identity
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zeroed(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Block(nn.Module):
    """A residual block, followed by attention where the resolution asks for it."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, attend: bool, cfg: UNetConfig):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.dropout, cfg.groups)
        self.attn = Attention(out_ch, cfg.num_heads, cfg.groups) if attend else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.attn(self.res(x, emb))


class Resample(nn.Module):
    """Halves the resolution with a stride-2 convolution, or (up) doubles it: nearest, then a convolution."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest") if self.up else x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # num_classes + 1 rows: the last is the null label of classifier-free guidance
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.guidance_mlp = None
        if cfg.guidance_input:  # it adds nothing at first: the student starts as its teacher
            self.guidance_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), _zeroed(nn.Linear(emb_dim, emb_dim)))
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        size, cur = cfg.image_size, ch
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.num_res_blocks):
                self.down.append(Block(cur, ch * mult, emb_dim, size in cfg.attention_resolutions, cfg))
                cur = ch * mult
                skips.append(cur)
            if level < len(cfg.channel_mults) - 1:
                self.down.append(Resample(cur, up=False))
                skips.append(cur)
                size //= 2

        self.mid = nn.ModuleList([Block(cur, cur, emb_dim, True, cfg), Block(cur, cur, emb_dim, False, cfg)])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mults))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(Block(cur + skips.pop(), ch * mult, emb_dim, size in cfg.attention_resolutions, cfg))
                cur = ch * mult
            if level > 0:
                self.up.append(Resample(cur, up=True))
                size *= 2

        self.norm_out = _norm(cur, cfg.groups)
        self.conv_out = _zeroed(nn.Conv2d(cur, cfg.in_channels, 3, padding=1))

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor | None = None,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """ε_θ(x_t, t, y) (or v_θ, see config.prediction). `t` holds one timestep per sample; `labels`
        one class (or null_label) per sample, and None means unconditional (the null label, for a
        conditional model); `guidance` one w per sample, for a model with guidance_input."""
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.guidance_mlp is not None:
            if guidance is None:
                raise ValueError("this model takes the guidance weight as an input: pass guidance")
            w = guidance.to(t.device, torch.float32).expand(t.shape[0]) * GUIDANCE_EMBEDDING_SCALE
            emb = emb + self.guidance_mlp(timestep_embedding(w, self.config.base_channels))
        elif guidance is not None:
            raise ValueError("this model does not take a guidance input")
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.null_label, dtype=torch.long)
            emb = emb + self.label_emb(labels)
        elif labels is not None:
            raise ValueError("this model is unconditional: labels must be None")

        h = self.conv_in(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb)
        for layer in self.up:
            h = layer(torch.cat([h, hs.pop()], dim=1), emb) if isinstance(layer, Block) else layer(h, emb)
        return self.conv_out(F.silu(self.norm_out(h)))


def build_unet(preset: str = "tiny", **overrides) -> UNet:
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {sorted(PRESETS)}")
    return UNet(UNetConfig(**{**PRESETS[preset], **overrides}))

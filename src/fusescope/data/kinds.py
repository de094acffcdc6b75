"""Modality kinds in one table: for each kind (`meta.json`'s `modalities.<name>.kind`), how its
file becomes a tensor, what augmentation does to it, how it is normalised, which corruptions
apply to it and what fills it when the modality is missing. Every reader, transform,
normaliser, corruption, dropout and exporter asks this table, so a new kind is one entry here.

    kind     file                        decoded to (float32)         notes
    color    8-bit RGB (or grey) image   [0, 1]                       jitter; RGB corruptions
    image    8 or 16-bit, 1 or 3 ch.     [0, 1] by its bit depth      HHA, shade, IR, disparity
    normal   8-bit RGB, (n + 1) / 2      [0, 1]                       a mirror negates n_x
    depth    uint16 PNG, 1 channel       value x scale = metres       0 = a hole; depth corruptions
    thermal  uint16 PNG, 1 channel       counts x scale = kelvin (raw 0 is a reading, not a hole
                                         counts without a scale)
    text     UTF-8 .txt per sample       token ids (fusescope.data.text)

Thermal follows the radiometric 16-bit cameras of the RGB-T sets (PST900's raw thermal PNGs,
FLIR's "TLinear" output: counts linear in temperature, 0.01 K or 0.04 K per count): the PNG
keeps the camera's counts, `scale` (kelvin per count), where known, makes them kelvin, and the
normaliser's train-split mean / std (every pixel counts: 0 is a temperature) does the rest.
MFNet ships its thermal as the 8-bit fourth channel of a 4-channel PNG: split it into its own
folder as kind `image`.

Missing modalities (`train.modality_dropout`, `fusescope eval --drop`, `predict` without a
file) are filled per kind: an image by zeros after normalisation (the train mean; what a depth
hole becomes), a text by one `<unk>` word. Importing this module needs no torch (meta.json
is read by the generators' worker processes); the methods that take tensors import it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fusescope.errors import FusescopeError

if TYPE_CHECKING:
    from torch import Tensor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
TEXT_EXTENSION = ".txt"
MASK_SUFFIX = "_mask"  # a text's key padding mask in a sample or batch: `<name>_mask`


def _unit_range(mean: float, std: float) -> tuple[float, float]:
    return 0.0, 1.0


def _zero_to_3sd(mean: float, std: float) -> tuple[float, float]:
    return 0.0, mean + 3 * std


def _mean_3sd(mean: float, std: float) -> tuple[float, float]:
    return mean - 3 * std, mean + 3 * std


@dataclass(frozen=True)
class ModalityKind:
    """One modality kind: everything fusescope does differently for it.

    Attributes:
        name: the kind as `meta.json` writes it.
        dtype: the stored sample type (`uint8`, `uint16`); None for text.
        sixteen_bit: an 8-bit kind that also reads 16-bit files (scaled by their own white).
        channels: the channel counts a modality of this kind may have; () for text.
        scale: whether `meta.json` gives a `scale` (units of `unit` per stored value):
            "required", "optional" or "none" (a given scale is dropped).
        unit: the physical unit a scaled value is in ("m", "K"); None for 8-bit images.
        unit_name: the unit in words ("metres", "kelvin"), for messages.
        extensions: file extensions, in the order they are looked for.
        holes: 0 means "no reading": left out of the statistics, kept at 0 by normalisation,
            resized by nearest neighbour so no value is made up between a hole and a reading.
        colour: the colour image: photometric jitter applies, prediction overlays draw on it.
        mirror_channel: the channel whose sign a horizontal flip changes (a normal's x), as
            stored in [0, 1] as (n + 1) / 2: mirrored, it becomes 1 - value.
        tokens: a text: token ids and a mask, not an image (no geometry, no normalisation).
        plausible: with a scale, the range the median of valid decoded values must fall in
            (a wrong `scale` in meta.json stops with the file named).
        corruption_group: the corruption family that acts on it (`fusescope.data.corruptions`:
            "depth" or "rgb"); None: no corruption applies.
        colormap: how `fusescope data inspect` shows one channel.
        target_range: `(mean, std) -> (low, high)` of natural values mapped to [-1, 1] when it
            is a translation target (8-bit images: [0, 1]).
        describe: what a decoded value is, in words (ONNX export's sidecar).
    """

    name: str
    dtype: Any = np.uint8
    sixteen_bit: bool = False
    channels: tuple[int, ...] = (1, 3)
    scale: str = "none"
    unit: str | None = None
    unit_name: str | None = None
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    holes: bool = False
    colour: bool = False
    mirror_channel: int | None = None
    tokens: bool = False
    plausible: tuple[float, float] | None = None
    corruption_group: str | None = None
    colormap: str = "gray"
    target_range: Callable[[float, float], tuple[float, float]] = field(default=_unit_range)
    describe: str = "8-bit image / 255"

    @property
    def spatial(self) -> bool:
        """An image (moved by geometric augmentation), not a token sequence."""
        return not self.tokens

    @property
    def interpolation(self) -> str:
        """How a resize makes new values: `nearest` where holes must stay holes."""
        return "nearest" if self.holes else "bilinear"

    # ----------------------------------------------------------------------------------------
    # decoding (NumPy: files to arrays)

    def check(self, array: np.ndarray, path: str | os.PathLike, name: str, spec) -> None:
        """The checks every reader of a file of this kind makes (training, evaluation, `data
        inspect`): dtype, channels and, with a scale, plausible units.

        Raises:
            FusescopeError: naming the file and what is wrong with it.
        """
        if array.dtype != self.dtype and not (self.sixteen_bit and array.dtype == np.uint16):
            if self.dtype == np.uint16:
                scaled = f" (value * {spec.scale} = {self.unit_name})" if spec.scale else ""
                raise FusescopeError(
                    f"{path}: {self.name} '{name}' must be a 16-bit PNG{scaled}, got {array.dtype}"
                )
            bits = "an 8- or 16-bit" if self.sixteen_bit else "an 8-bit"
            raise FusescopeError(f"{path}: '{name}' must be {bits} image, got {array.dtype}")
        channels = 1 if array.ndim == 2 else array.shape[-1]
        if self.dtype == np.uint16 and array.ndim != 2:
            raise FusescopeError(f"{path}: {self.name} '{name}' must have one channel")
        if channels != spec.channels:
            raise FusescopeError(
                f"{path}: '{name}' has {channels} channels, meta.json says {spec.channels}"
            )
        if self.plausible is not None and spec.scale is not None:
            values = array.astype(np.float32) * np.float32(spec.scale)
            valid = values[values > 0] if self.holes else values.ravel()
            if valid.size:
                median = float(np.median(valid))
                lo, hi = self.plausible
                if not lo <= median <= hi:
                    raise FusescopeError(
                        f"{path}: {self.name} '{name}' has median {median:.4g} {self.unit} with "
                        f"scale {spec.scale} {self.unit}/unit; expected {lo}-{hi} {self.unit}: "
                        f"wrong units or scale in meta.json?"
                    )

    def decode(self, array: np.ndarray, spec, dtype: Any = np.float32) -> np.ndarray:
        """A checked file's array as (C, H, W) of `dtype` (float32 for training; statistics
        use float64) in natural units: 8-bit images / 255, 16-bit values x `scale` (raw values
        where the kind's scale is optional and not given)."""
        if self.dtype == np.uint16:
            values = array.astype(dtype)
            if spec.scale is not None:
                values = values * dtype(spec.scale)
            return values[None]
        x = array[..., None] if array.ndim == 2 else array
        # by the file's bit depth: 255 for 8-bit, 65535 for a 16-bit image kind's PNG (e.g.
        # Cityscapes' disparity), so every image decodes to [0, 1]
        white = float(np.iinfo(array.dtype).max)
        return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=dtype) / white

    def valid(self, x: np.ndarray) -> np.ndarray:
        """Which decoded values are readings, for the statistics (holes left out)."""
        return x > 0 if self.holes else np.ones_like(x, dtype=bool)

    # ----------------------------------------------------------------------------------------
    # augmentation, normalisation and fills (torch tensors, through their own methods)

    def mirror(self, x: Tensor) -> Tensor:
        """A natural-unit image (C, H, W) or batch (..., C, H, W) flipped left-right, its values
        changed as the kind says (a normal's x component turns around)."""
        x = x.flip(-1)
        if self.mirror_channel is None:
            return x
        c = self.mirror_channel
        return _replace_channel(x, c, 1 - x.narrow(-3, c, 1))

    def mirror_normalised(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """`mirror` of an image already normalised with (mean, std) (each (C, 1, 1)): for the
        mirrored channel, (1 - v - mean) / std = (1 - 2 mean) / std - x."""
        x = x.flip(-1)
        if self.mirror_channel is None:
            return x
        c = self.mirror_channel
        turned = (1 - 2 * mean[c]) / std[c] - x.narrow(-3, c, 1)
        return _replace_channel(x, c, turned)

    def normalise(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """(x - mean) / std per channel; holes (0) stay 0."""
        out = (x - mean) / std
        return out.where(x > 0, out.new_zeros(())) if self.holes else out

    def fill(
        self,
        batch: Mapping[str, Tensor],
        name: str,
        keep: Tensor,
        text: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """The batch entries of modality `name` with the samples where `keep` (B,) is False
        replaced by the kind's missing-modality fill: images by zeros after normalisation, a
        text by the ids `text` of a text that says nothing in the run's tokenizer (default:
        our vocabulary's, one `<unk>` word), its mask true on those ids only."""
        if not self.tokens:
            x = batch[name]
            return {name: x * keep.to(x.dtype).view(-1, *[1] * (x.ndim - 1))}
        import torch

        from fusescope.data.text import PAD_ID

        blank = _blank_text(text)
        ids, mask = batch[name], batch[f"{name}{MASK_SUFFIX}"]  # (B, L), L >= 1
        short = len(blank) - ids.shape[1]
        if short > 0:  # every text of the batch is shorter than the blank one: pad them
            ids = torch.nn.functional.pad(ids, (0, short), value=PAD_ID)
            mask = torch.nn.functional.pad(mask, (0, short), value=False)
        words = ids.new_full(ids.shape[1:], PAD_ID)
        words[: len(blank)] = blank.to(ids.device)
        on_words = mask.new_zeros(mask.shape[1:])
        on_words[: len(blank)] = True
        keep = keep.view(-1, 1)
        return {
            name: ids.where(keep, words),
            f"{name}{MASK_SUFFIX}": mask.where(keep, on_words),
        }

    def blank(
        self,
        name: str,
        like: Tensor,
        batch_size: int,
        channels: int,
        text: Sequence[int] | None = None,
    ) -> dict[str, Tensor]:
        """The batch entries of a modality that is absent altogether: zeros after
        normalisation, `channels` deep at the spatial size of `like` (an image of the batch),
        or per sample the ids `text` of a text that says nothing (default: one `<unk>`
        word)."""
        import torch

        if not self.tokens:
            return {name: like.new_zeros(batch_size, channels, *like.shape[-2:])}
        ids = _blank_text(text).to(like.device).expand(batch_size, -1).contiguous()
        return {name: ids, f"{name}{MASK_SUFFIX}": torch.ones_like(ids, dtype=torch.bool)}


def _blank_text(text: Sequence[int] | None) -> Tensor:
    """The ids `(L,)` of a text that says nothing: `text`, or our vocabulary's `<unk>` word."""
    import torch

    from fusescope.data.text import UNK_ID

    return torch.as_tensor(text if text is not None else [UNK_ID], dtype=torch.int64)


def _replace_channel(x: Tensor, c: int, value: Tensor) -> Tensor:
    """`x` (..., C, H, W) with channel `c` replaced by `value` (..., 1, H, W), out of place."""
    import torch

    rest = x.shape[-3] - c - 1
    return torch.cat([x.narrow(-3, 0, c), value, x.narrow(-3, c + 1, rest)], dim=-3)


KINDS: dict[str, ModalityKind] = {}


def register_kind(kind: ModalityKind) -> ModalityKind:
    """Add a kind to the table (a new kind is one `register_kind(ModalityKind(...))`)."""
    if kind.name in KINDS:
        raise ValueError(f"modality kind {kind.name!r} registered twice")
    KINDS[kind.name] = kind
    return kind


def modality_kind(name: str, where: str = "") -> ModalityKind:
    """The kind called `name`.

    Raises:
        FusescopeError: an unknown kind, listing the known ones (`where` prefixes it).
    """
    if not isinstance(name, str) or name not in KINDS:
        prefix = f"{where}: " if where else ""
        raise FusescopeError(f"{prefix}kind {name!r} is not one of {', '.join(KINDS)}")
    return KINDS[name]


def kind_of(spec) -> ModalityKind:
    """The kind of a `ModalitySpec`."""
    return KINDS[spec.kind]


# 8-bit RGB; photometric augmentation applies to it alone
COLOR = register_kind(ModalityKind("color", colour=True, corruption_group="rgb"))
# any other 8- or 16-bit image (HHA, shade, an 8-bit infrared or thermal image, Cityscapes'
# 16-bit disparity), decoded to [0, 1] by its bit depth
IMAGE = register_kind(
    ModalityKind("image", sixteen_bit=True, describe="8- or 16-bit image / its white (255, 65535)")
)
# surface normals, 8-bit (n + 1) / 2 per axis (x right, y down, z forward)
NORMAL = register_kind(ModalityKind("normal", channels=(3,), mirror_channel=0))
# uint16 PNG; value * scale = metres; 0 = no reading (a hole)
DEPTH = register_kind(
    ModalityKind(
        "depth",
        dtype=np.uint16,
        channels=(1,),
        scale="required",
        unit="m",
        unit_name="metres",
        holes=True,
        plausible=(0.05, 200.0),
        corruption_group="depth",
        colormap="viridis",
        target_range=_zero_to_3sd,
        describe="uint16 PNG x scale = metres",
    )
)
# uint16 PNG of radiometric counts; counts * scale = kelvin where a scale is given; 0 is a
# reading (a temperature), not a hole
THERMAL = register_kind(
    ModalityKind(
        "thermal",
        dtype=np.uint16,
        channels=(1,),
        scale="optional",
        unit="K",
        unit_name="kelvin",
        plausible=(150.0, 1000.0),
        colormap="inferno",
        target_range=_mean_3sd,
        describe="uint16 PNG x scale = kelvin (raw counts without a scale)",
    )
)
# one UTF-8 file per sample (fusescope.data.text); no channels
TEXT = register_kind(
    ModalityKind(
        "text",
        dtype=None,
        channels=(),
        extensions=(TEXT_EXTENSION,),
        tokens=True,
        describe="token ids of the run's vocabulary",
    )
)

"""Every task's multi-stream methods from one place: a task's host (`MultiStreamModel` with
that task's head) plus a fusion op of `FUSION_OPS`.

A task registers its host once (`register_fusion_ops(registry, host)`); each op of the registry
then becomes a method of the task under the op's name (`cen`, `asymfusion`, `baseline`, ...),
whose options are the host's plus the op's (one option set per op, for every task, with the
task's paper defaults where `task_defaults` gives them), and `multistream` is the host with no
op. A method the task registers itself under the same name (segmentation's `baseline`, which
also has the merged-streams setting; classification's `mango` over image + text branches) wins.
Adding a fusion op to every task is one op module (an `insert(model, **options)` registered in
`FUSION_OPS`), one registry row, one row of the contract tester (tests/test_fusion_contract.py).

The segmentation host is here; translation's (`models/translation/unet.py`) and
classification's (`models/classification/multistream.py`) live with their heads.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable

from torch import Tensor

from fusescope.errors import OptionError
from fusescope.models.backbones import create_encoder, feature_channels, feature_reductions
from fusescope.models.core import common_channels, resize_to
from fusescope.models.decoders import build_decoder
from fusescope.models.multistream import MultiStreamModel
from fusescope.models.registry import FUSION_OPS
from fusescope.registry import Registry


def _hints(fn: Callable | None) -> dict:
    try:
        return typing.get_type_hints(fn) if fn is not None else {}
    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
        return {}


def upsample_streams(small: Tensor, num_streams: int, size: tuple[int, int]) -> Tensor:
    """Decoder logits `(B*M, K, h, w)` -> `(M, B, K, H, W)`: modality-major before upsampling,
    where the copy is small, so each modality's full-size logits are contiguous for its loss."""
    small = small.unflatten(0, (-1, num_streams)).transpose(0, 1).flatten(0, 1)  # (M*B, K, h, w)
    return resize_to(small, size).unflatten(0, (num_streams, -1))


def segmentation_host(
    modalities: list[str],
    in_channels: dict[str, int],
    num_classes: int,
    *,
    backbone: str = "resnet18",
    pretrained: bool | str = False,
    decoder: str | dict = "light",
    shared: bool = True,
) -> MultiStreamModel:
    """M streams through one encoder-decoder with shared weights and private norms; each
    stream predicts (`per_modality`), the learned ensemble of them is scored (`logits`).

    Args:
        backbone, pretrained: the encoder (`create_encoder`; any timm family).
        decoder: a decoder name or {name, **options} (`models/decoders.py`), run on every
            stream with shared weights and private BatchNorms.
        shared: share the convolutions (False: private ones, CEN Table 1's "unshared convs";
            convolutional encoders only).
    """
    if len(modalities) < 2:
        raise OptionError(
            f"a multi-stream model needs >= 2 modalities; data.modalities is {modalities}"
        )
    in_chans = common_channels(modalities, in_channels)
    plain = create_encoder(backbone, in_chans, pretrained)
    head = build_decoder(decoder, feature_channels(plain), feature_reductions(plain), num_classes)
    model = MultiStreamModel(
        modalities, in_chans, plain, head, upsample_streams, head_name="decoder", shared=shared
    )
    model.num_classes = num_classes
    return model


def register_fusion_ops(
    task: str,
    registry: Registry,
    host: Callable[..., MultiStreamModel],
    finalize: Callable[[MultiStreamModel], MultiStreamModel] | None = None,
) -> None:
    """Register `multistream` and every op of `FUSION_OPS` for `task` as methods on `host`
    (see the module docstring); names the task registered itself are kept. `finalize` runs on
    the model once its op is in (the U-Net's pix2pix initialisation)."""
    if "multistream" not in registry:
        registry.register("multistream")(op_method(task, host, None, finalize))
    for name in FUSION_OPS.names():
        insert = FUSION_OPS.get(name)
        if name not in registry and task in insert.tasks:
            registry.register(name)(op_method(task, host, name, finalize))


def op_method(
    task: str,
    host: Callable[..., MultiStreamModel],
    op: str | None,
    finalize: Callable[[MultiStreamModel], MultiStreamModel] | None = None,
) -> Callable:
    """A method builder: `host(...)` with the op inserted; its signature is the host's then
    the op's keyword options (their defaults the task's), so unknown keys are refused."""
    host_sig = inspect.signature(host)
    fixed = [p for p in host_sig.parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    host_params = [p for p in host_sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
    insert = FUSION_OPS.get(op) if op is not None else None
    op_params = []
    if insert is not None:
        defaults = insert.task_defaults.get(task, {})
        op_params = [
            p.replace(default=defaults.get(p.name, p.default))
            for p in inspect.signature(insert).parameters.values()
            if p.kind is p.KEYWORD_ONLY
        ]
    host_names = {p.name for p in host_params}

    def build(*args, **options):
        # the task's three fixed arguments, by position or by name (`Registry.build`)
        args = (*args, *(options.pop(p.name) for p in fixed[len(args) :]))
        host_options = {k: v for k, v in options.items() if k in host_names}
        op_options = {
            p.name: options.get(p.name, p.default) for p in op_params
        }  # every op option, the task's defaults filled in
        if insert is not None and insert.check is not None:
            insert.check(**op_options)  # before a backbone is built
        model = host(*args, **host_options)
        if insert is not None:
            insert(model, **op_options)
        return finalize(model) if finalize is not None else model

    build.__signature__ = inspect.Signature([*fixed, *host_params, *op_params])
    # resolved annotations of the host's and the op's options, so `Registry.build` checks the
    # values of a generated method as it checks a hand-written one's (theta=nan is refused)
    hints = {**_hints(insert), **_hints(host)}
    build.__annotations__ = {
        p.name: hints[p.name] for p in [*host_params, *op_params] if p.name in hints
    }
    build.__name__ = op or "multistream"
    build.__doc__ = (insert.__doc__ if insert is not None else None) or (
        "The multi-stream host with no fusion op: shared weights, private norms, per-stream "
        "outputs and their learned ensemble (CEN Table 1's reference)."
    )
    build.paper = getattr(insert, "paper", "CEN Table 1 (multi-stream, no fusion)")
    return build

"""The one multi-stream host: an encoder shared by M modalities (shared weights, private norms),
fusion ops inserted at its sites, and one head per stream with their learned ensemble.

Module surgery turns an encoder (any `create_encoder` backbone, or the U-Net translator's
levels) into an M-stream network (CEN section 3.4, AsymFusion's parameter-sharing scheme,
TokenFusion's shared linears with private LayerNorms): the modalities are stacked on the batch
axis sample-major (`core.stack_modalities`), so every shared layer runs once for all of them,
and every norm becomes per-modality (`models/norms.py`, one native call for all modalities). Fusion
ops act at the sites `models/sites.py` lists per block family; a method declares where with a
`Where` and a factory that builds one op per `FusionPoint`.

`MultiStreamModel` is the model every multi-stream method of every task is: segmentation (a
decoder per stream), classification (a pooled linear head per stream) and translation (the
U-Net decoder per stream) differ only in the head; each stream's output is `per_modality`, and
the learned `Ensemble` of them is scored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from fusescope.errors import OptionError
from fusescope.models.backbones import stage_channels, stage_modules
from fusescope.models.core import (
    Ensemble,
    FusionModel,
    FusionOp,
    modality_view,
    stack_modalities,
    tile_channels,
)
from fusescope.models.norms import ModalityBatchNorm, ModalityLayerNorm, convert_modules
from fusescope.models.sites import (
    ForwardScope,
    FusionPoint,
    ScopeSlot,
    SiteHook,
    Where,
    block_kind,
)


class _Block:
    def __init__(self, name: str, module: nn.Module, stage: int, kind):
        self.name, self.module, self.stage, self.kind = name, module, stage, kind
        self.index, self.last = 0, False


class MultiStreamEncoder(nn.Module):
    """An encoder made M-stream by module surgery (see the module docstring).

    Args:
        encoder: from `fusescope.models.backbones.create_encoder` (pretrained weights already
            in), or any module whose stages `stage_modules` names and whose blocks
            `sites.block_kind` knows (the U-Net translator's levels).
        num_modalities: M (1: a single stream, no fusion).
        shared: share the convolutions (CEN); False keeps one private copy per modality.

    `forward((B*M, C, H, W)) -> [(B*M, C_l, H_l, W_l) per level]` (sample-major stacks);
    `feature_info` is the source encoder's.
    """

    def __init__(self, encoder: nn.Module, num_modalities: int, shared: bool = True):
        super().__init__()
        self.num_modalities = num_modalities
        self.shared = shared
        self.feature_info = encoder.feature_info
        self.family = getattr(encoder, "family", None)
        self._stage_modules = stage_modules(encoder)
        self._stage_channels = stage_channels(encoder)
        # a token grid's stride per stage (a ViT's stages all run at its patch stride)
        self._stage_strides = list(
            getattr(encoder, "stage_strides", None) or encoder.feature_info.reduction()
        )
        self.body = convert_modules(encoder, num_modalities, shared)
        self.fusion = nn.ModuleDict()
        self.scope_slot = ScopeSlot()
        self._blocks = self._find_blocks()

    def _find_blocks(self) -> list[_Block]:
        names = [n for n, _ in self.body.named_modules()]
        # a module's position = the position of its last descendant in named_modules order
        stage_end = []
        for stage_name in self._stage_modules:
            inside = [
                i for i, n in enumerate(names) if n == stage_name or n.startswith(stage_name + ".")
            ]
            stage_end.append(max(inside))
        blocks: list[_Block] = []
        for i, (name, module) in enumerate(self.body.named_modules()):
            kind = block_kind(module)
            if kind is not None:
                stage = next((s + 1 for s, end in enumerate(stage_end) if i <= end), None)
                if stage is not None:
                    blocks.append(_Block(name, module, stage, kind))
        for stage in {b.stage for b in blocks}:
            in_stage = [b for b in blocks if b.stage == stage]
            for j, b in enumerate(in_stage):
                b.index, b.last = j, j == len(in_stage) - 1
        return blocks

    def share_norms(self, select: Callable[[str], bool]) -> list[str]:
        """Make the per-modality LayerNorms whose module name (in `body`) `select` accepts
        shared by the modalities again: one affine, modality 0's (every copy starts from the
        same pretrained norm), where a method's code shares them (GeminiFusion's Swin shares
        its blocks' and patch-merging norms). Call before inserting ops. Returns the names."""
        shared = []
        for name, module in list(self.body.named_modules()):
            if not (isinstance(module, ModalityLayerNorm) and select(name)):
                continue
            make = LayerNorm2d if module.channel_dim == 1 else nn.LayerNorm
            norm = make(module.num_features, eps=module.eps).to(module.weight.device)
            with torch.no_grad():
                norm.weight.copy_(module.weight[0])
                norm.bias.copy_(module.bias[0])
            parent, _, child = name.rpartition(".")
            setattr(self.body.get_submodule(parent) if parent else self.body, child, norm)
            shared.append(name)
        return shared

    @property
    def block_family(self) -> str | None:
        """The family of the encoder's blocks (`cnn`, `transformer`, `level`), None if it has
        none that `sites.BLOCKS` knows."""
        families = {b.kind.family for b in self._blocks}
        return families.pop() if len(families) == 1 else None

    @property
    def stage_strides(self) -> list[int]:
        """Each stage's token stride (a ViT's four stages all at its patch stride)."""
        return list(self._stage_strides)

    @property
    def num_stages(self) -> int:
        return len(self._stage_modules)

    def points(self, where: Where) -> list[FusionPoint]:
        """The points `where` selects, in forward order."""
        num_stages = self.num_stages
        stages = where.stages if where.stages is not None else tuple(range(1, num_stages + 1))
        bad = [s for s in stages if not (isinstance(s, int) and 1 <= s <= num_stages)]
        if bad or not stages or len(set(stages)) != len(stages):
            raise OptionError(
                f"stages {list(stages)}: each must be a distinct stage number in "
                f"1..{num_stages} of this backbone"
            )
        if where.sites == ("stage_out",):
            family = self.block_family or "cnn"
            return [
                FusionPoint(
                    self._stage_modules[s - 1],
                    s,
                    -1,
                    True,
                    self._stage_channels[s - 1],
                    family,
                    self._stage_strides[s - 1],
                )
                for s in stages
            ]
        out = []
        for b in self._blocks:
            if b.stage not in stages or not (where.blocks == "all" or b.last):
                continue
            if not all(self._site_module(b, site) is not None for site in where.sites):
                if where.stages is not None:  # asked for by name: say why it cannot be
                    raise OptionError(
                        f"{b.name} (stage {b.stage}) has no site {'/'.join(where.sites)}"
                    )
                continue
            norm = b.module.get_submodule(b.kind.norm)
            conv = b.module.get_submodule(b.kind.conv) if b.kind.conv else None
            # a shared (plain) LayerNorm names its width `normalized_shape`
            width = getattr(norm, "num_features", None) or norm.normalized_shape[-1]
            out.append(
                FusionPoint(
                    b.name,
                    b.stage,
                    b.index,
                    b.last,
                    width,
                    b.kind.family,
                    self._stage_strides[b.stage - 1],
                    norm=norm,
                    in_channels=conv.in_channels if conv is not None else None,
                )
            )
        return out

    @staticmethod
    def _site_module(block: _Block, site: str) -> nn.Module | None:
        spec = block.kind.sites.get(site)
        if spec is None:
            return None
        try:
            module = block.module.get_submodule(spec.module) if spec.module else block.module
        except AttributeError:
            return None
        return module

    def insert(self, where: Where, factory: Callable[[FusionPoint], nn.Module]) -> list[nn.Module]:
        """Build one op per point with `factory` and wire it into every site of `where`.

        An op is called as `op(x, site)` with the site's tensor in the modality view
        (`sites.SiteHook`); it is registered under `fusion.<point name>` (dots as underscores).
        """
        points = self.points(where)
        if not points:
            kinds = sorted({type(b.module).__name__ for b in self._blocks}) or ["none"]
            raise OptionError(
                f"{where} selects no fusion point in this {self.family or 'encoder'} "
                f"(blocks with fusion sites: {', '.join(kinds)})"
            )
        ops = []
        for point in points:
            op = factory(point)
            key = point.name.replace(".", "_")
            if key in self.fusion:
                raise OptionError(f"a fusion op is already registered at {point.name}")
            self.fusion[key] = op
            for site in where.sites:
                self._wire(point, site, op)
            ops.append(op)
        return ops

    def _wire(self, point: FusionPoint, site: str, op: nn.Module) -> None:
        M = self.num_modalities
        if site == "stage_out":
            stage = self.body.get_submodule(point.name)
            # what a stage gives: a Swin stage channels-last maps, a ViT's block tokens
            layout = {"swin": "nhwc", "vit": "tokens"}.get(self.family, "nchw")
            stage.register_forward_hook(SiteHook(op, site, layout, point, M, self.scope_slot))
            return
        block = next(b for b in self._blocks if b.name == point.name)
        spec = block.kind.sites[site]
        module = self._site_module(block, site)
        hook = SiteHook(op, site, spec.layout, point, M, self.scope_slot)
        if spec.hook in ("norm", "act") and not isinstance(module, ModalityBatchNorm):
            spec = type(spec)(spec.module, "post", spec.layout)  # a norm without slots
        if spec.hook == "norm":
            module.after_norm.append(hook)
            act_name = next((s.module for k, s in block.kind.sites.items() if k == "act_out"), None)
            act = block.module.get_submodule(act_name) if act_name else None
            if act is not None and getattr(act, "inplace", False):
                # the op's output reaches the activation as a (B*M, ...) view of its
                # (B, M, ...) result; in place on a view, autograd would copy it in backward
                act.inplace = False
        elif spec.hook == "act":
            module.after_act.append(hook)
        elif spec.hook == "pre":
            module.register_forward_pre_hook(hook)
        else:
            module.register_forward_hook(hook)

    def run(self, x: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Features per level and the auxiliary losses fusion ops measured in this forward."""
        M = self.num_modalities
        if x.shape[0] % M:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of {M} modalities")
        with self.forward_scope(x.shape[0] // M, tuple(x.shape[-2:])) as scope:
            return self.body(x), scope.losses

    @contextlib.contextmanager
    def forward_scope(
        self, batch: int = 0, input_size: tuple[int, int] = (0, 0)
    ) -> Iterator[ForwardScope]:
        """A fresh scope for the fusion ops of one forward (`run` opens one; open one to run a
        block of `body` directly), dropped when it ends."""
        scope = ForwardScope(batch, input_size)
        self.scope_slot.current = scope
        try:
            yield scope
        finally:
            self.scope_slot.current = None

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.run(x)[0]


class MultiStreamModel(FusionModel):
    """M streams through one encoder (shared weights, private norms) and one head run on every
    stream; each stream's output is `per_modality`, their learned `Ensemble` is scored.

    Args:
        modalities: input modality names, in model order.
        in_chans: the channels every modality is tiled to (`core.common_channels`), or for
            `streams="concat"` the channels of the concatenated inputs.
        encoder: the plain encoder; made M-stream here.
        head: run on the encoder's `(B*M, ...)` features (every stream at once), its output
            `(B*M, ...)`; its norms become per-modality too (a segmentation decoder's BNs)
            unless `convert_head` is False.
        finish: `finish(head_output, M, (H, W)) -> (M, B, ...)`: the streams' outputs
            modality-major at the input's size (the task's last step: upsampling, cropping).
        head_name: the head's attribute name (`decoder`, `head`): module names and state-dict
            keys stay those of each task's models.
        shared: share the convolutions between the streams.
        streams: "stacked" (one stream per modality) or "concat" (one stream of the inputs
            concatenated on the channel axis, no ensemble: pix2pix on several inputs).
        output_key: the task's key of the scored output.

    Fusion methods call `self.encoder.insert(where, factory)` after construction.
    """

    def __init__(
        self,
        modalities: list[str],
        in_chans: int,
        encoder: nn.Module,
        head: nn.Module,
        finish: Callable[[Tensor, int, tuple[int, int]], Tensor],
        *,
        head_name: str = "decoder",
        shared: bool = True,
        streams: str = "stacked",
        output_key: str = "logits",
        convert_head: bool = True,
    ):
        super().__init__(modalities)
        if streams not in ("stacked", "concat"):
            raise OptionError(f"streams must be stacked or concat, not {streams!r}")
        self.output_key = output_key
        self.streams = streams
        self.num_streams = len(modalities) if streams == "stacked" else 1
        self.in_chans = in_chans
        self.head_name = head_name
        self.finish = finish
        M = self.num_streams
        self.encoder = MultiStreamEncoder(encoder, M, shared=shared)
        setattr(self, head_name, convert_modules(head, M, shared) if convert_head else head)
        self.ensemble = Ensemble(M) if M > 1 else None

    def stack_inputs(self, batch: dict[str, Tensor]) -> Tensor:
        """The encoder's input: `(B*M, C, H, W)` stacked modalities (1-channel ones tiled), or
        the concatenation `(B, sum C, H, W)`."""
        inputs = self.inputs(batch)
        if self.streams == "concat":
            return torch.cat(inputs, dim=1)
        return stack_modalities([tile_channels(t, self.in_chans) for t in inputs])

    def forward(self, batch: dict[str, Tensor]) -> dict:
        x = self.stack_inputs(batch)
        features, measured = self.encoder.run(x)
        head = getattr(self, self.head_name)
        stacked = self.finish(head(features), self.num_streams, tuple(x.shape[-2:]))
        if self.num_streams == 1:
            return self.output(stacked[0], aux_losses=measured)
        return self.ensemble_output(stacked, aux_losses=measured)


def streams_first(x: Tensor, num_streams: int) -> Tensor:
    """`(B*M, ...)` sample-major -> `(M, B, ...)` modality-major (a view)."""
    return modality_view(x, num_streams).transpose(0, 1)


__all__ = [
    "FusionOp",
    "MultiStreamEncoder",
    "MultiStreamModel",
    "Where",
    "FusionPoint",
    "ForwardScope",
    "streams_first",
]

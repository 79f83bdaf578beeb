"""Text data: the word list and its rule for shared words, splits by word, tokenizers fitted on
the training words only, OOV rates, the noisy spellings, and config errors at the edge."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from studylib.cli import main
from studylib.config import DataConfig, load_experiment
from studylib.data import load_splits, text
from studylib.data.text import (
    fit_tokenizer,
    misspell,
    oov_rate,
    spelling_pairs,
    word_list,
    word_splits,
)
from studylib.errors import ConfigError
from studylib.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# Three languages, 300 words each: the whole pipeline in well under a second.
SMALL = DataConfig(name="words", languages=("en", "de", "fr"), words_per_language=300)


def test_word_list_follows_the_shared_word_rule(data_cache):
    from wordfreq import top_n_list, word_frequency

    dropped = word_list(SMALL, data_cache)
    lists = {lang: set(top_n_list(lang, 300)) for lang in ("en", "de", "fr")}
    shared = {w for w in lists["en"] & lists["fr"] if w.isalpha()}  # "a", "on", ...
    assert shared and not shared & set(dropped.words)
    assert all(w.isalpha() for w in dropped.words)
    assert len(set(dropped.words)) == len(dropped.words)  # every word once

    labelled = word_list(SMALL.model_copy(update={"shared_words": "most_frequent"}), data_cache)
    by_word = dict(zip(labelled.words, labelled.labels, strict=True))
    for word in sorted(shared)[:20]:
        holders = [i for i, lang in enumerate(SMALL.languages) if word in lists[lang]]
        best = max(holders, key=lambda i: word_frequency(word, SMALL.languages[i]))
        assert by_word[word] == best, word
    assert len(labelled.words) > len(dropped.words)


def test_word_list_is_cached(data_cache, monkeypatch):
    first = word_list(SMALL, data_cache)
    cached = [p for p in data_cache.glob("words-*.json") if json.loads(p.read_text())["recipe"]]
    assert cached

    def no_build(*_args):
        raise AssertionError("a second call must read the cache")

    monkeypatch.setattr(text, "build_word_list", no_build)
    second = word_list(SMALL, data_cache)
    assert first.words == second.words and np.array_equal(first.test, second.test)


def test_splits_are_by_word_seeded_with_a_fixed_test_split(data_cache):
    a = word_splits(SMALL, 0, data_cache)
    b = word_splits(SMALL, 0, data_cache)
    c = word_splits(SMALL, 1, data_cache)
    train, val, test = set(a.train), set(a.val), set(a.test)
    assert not train & val and not train & test and not val & test
    assert a.train == b.train and a.val == b.val
    assert a.val != c.val and a.test == c.test  # validation follows the seed; test never
    # The test split holds 20% of each language's words.
    counts = np.bincount(word_list(SMALL, data_cache).labels)
    assert np.array_equal(np.bincount(a.y_test), np.round(0.2 * counts).astype(int))
    assert len(a.val) == round(0.2 * (len(a.train) + len(a.val)))


def test_knobs_touch_the_training_words_only(data_cache):
    clean = word_splits(SMALL, 0, data_cache)
    knobs = SMALL.model_copy(update={"train_examples": 100, "label_noise": 0.3})
    noisy = word_splits(knobs, 0, data_cache)
    assert noisy.train == clean.train[:100]
    assert noisy.val == clean.val and np.array_equal(noisy.y_val, clean.y_val)
    assert noisy.test == clean.test and np.array_equal(noisy.y_test, clean.y_test)
    assert (noisy.y_train != clean.y_train[:100]).sum() == 30  # always a wrong language
    with pytest.raises(ConfigError, match="data.train_examples = 100000"):
        word_splits(SMALL.model_copy(update={"train_examples": 100_000}), 0, data_cache)


# ---------------------------------------------------------------------------------------------
# Tokenizers: fitted on training words only


TRAIN = ["lower", "lowest", "newer", "wider", "new"]
VAL = ["slower", "zebra"]  # "s", "z", "b" and "a" never occur in training


@pytest.mark.parametrize("kind", ["char", "word", "bpe"])
def test_tokenizers_learn_their_vocabulary_from_training_words_only(kind):
    tokenizer = fit_tokenizer(kind, TRAIN, vocab_size=40)
    assert [tokenizer.vocab[t] for t in text.SPECIALS] == [PAD_ID, UNK_ID, BOS_ID, EOS_ID]
    pieces = set(tokenizer.vocab) - set(text.SPECIALS)
    seen_chars = {c for w in TRAIN for c in w}
    assert all(set(piece) <= seen_chars for piece in pieces)  # nothing from "zebra"
    if kind == "word":
        assert pieces == set(TRAIN)
    val_ids = tokenizer.encode(VAL)
    assert all(ids for ids in val_ids)
    assert UNK_ID in val_ids[1]  # "zebra" has letters training never showed
    assert tokenizer.encode(TRAIN) == tokenizer.encode(list(TRAIN))  # deterministic


def test_bpe_vocabulary_comes_from_the_training_split_of_the_run(data_cache):
    cfg = SMALL.model_copy(update={"tokenizer": "bpe", "vocab_size": 200})
    splits = load_splits(cfg, 0, data_cache)
    words = word_splits(cfg, 0, data_cache)
    on_train = fit_tokenizer("bpe", words.train, 200)
    with_val = fit_tokenizer("bpe", words.train + words.val, 200)
    assert on_train.vocab != with_val.vocab  # the check below could tell them apart
    # The run's tensors are exactly the encoding by the train-only tokenizer.
    expected = text.pad(on_train.encode(words.val), splits.x_val.shape[1])
    assert torch.equal(splits.x_val, expected)
    assert splits.vocab_size == on_train.vocab_size <= 200


def test_word_tokens_make_every_held_out_word_unknown(data_cache):
    splits = load_splits(SMALL.model_copy(update={"tokenizer": "word"}), 0, data_cache)
    assert splits.x_val.shape[1] == 1
    assert (splits.x_val == UNK_ID).all() and (splits.x_test == UNK_ID).all()
    assert splits.data_metrics["oov_rate/val"] == 1.0 == splits.data_metrics["oov_rate/test"]
    assert splits.data_metrics["oov_rate/train"] == 0.0


def test_oov_rate_is_the_share_of_unknown_tokens():
    assert oov_rate([[5, UNK_ID, 6], [UNK_ID]]) == 0.5
    tokenizer = fit_tokenizer("char", ["ab"], 40)
    assert oov_rate(tokenizer.encode(["abc", "b"])) == 0.25  # "c" of 4 characters


def test_char_splits_are_padded_token_ids(data_cache):
    splits = load_splits(SMALL, 0, data_cache)
    words = word_splits(SMALL, 0, data_cache)
    assert splits.x_train.dtype == torch.int64 and splits.num_classes == 3
    lengths = (splits.x_train != PAD_ID).sum(dim=1)
    assert lengths.tolist() == [len(w) for w in words.train]
    assert splits.x_train.shape[1] == max(len(w) for w in words.train + words.val + words.test)
    assert set(splits.data_metrics) >= {"oov_rate/val", "oov_rate/test", "vocab_size"}


# ---------------------------------------------------------------------------------------------
# The spelling task


def test_misspell_edits_at_the_configured_rate_and_is_seeded():
    words = ["international"] * 400
    alphabet = "abcdefghijklmnopqrstuvwxyz"
    noisy = misspell(words, 0.2, alphabet, np.random.default_rng(0))
    assert noisy == misspell(words, 0.2, alphabet, np.random.default_rng(0))
    changed = np.mean([n != w for n, w in zip(noisy, words, strict=True)])
    assert changed > 0.9  # 1 - 0.8^13 = 0.95 of the words have an edit
    lengths = np.array([len(n) for n in noisy])
    assert lengths.min() < 13 < lengths.max()  # deletions and insertions both happen
    assert misspell(["a"] * 50, 0.99, alphabet, np.random.default_rng(1)).count("") == 0


def test_spelling_splits_pair_noisy_sources_with_clean_targets(data_cache):
    cfg = DataConfig(name="spelling", languages=("en", "de"), words_per_language=200, typo_rate=0.3)
    splits = load_splits(cfg, 0, data_cache)
    again = load_splits(cfg, 0, data_cache)
    assert splits.task == "seq2seq" and splits.num_classes == splits.vocab_size
    assert splits.shared_vocab  # characters in, characters out: one vocabulary
    assert torch.equal(splits.x_val, again.x_val)  # noise is seeded
    pairs = [spelling_pairs(cfg, seed, word_splits(cfg, seed, data_cache)) for seed in (0, 1)]
    assert pairs[0]["test"] == pairs[1]["test"]  # the test words and their noise are fixed
    assert pairs[0]["val"][0] != pairs[1]["val"][0]
    assert pairs[0]["val"][1] == word_splits(cfg, 0, data_cache).val  # targets are clean
    assert (splits.y_train[:, 0] == BOS_ID).all()
    lengths = (splits.y_train != PAD_ID).sum(dim=1)
    assert (splits.y_train.gather(1, (lengths - 1)[:, None]) == EOS_ID).all()
    copy = splits.data_metrics["copy_acc/val"]
    assert 0.05 < copy < 0.6  # most words were edited; the untouched ones are the floor


SPELLING = DataConfig(name="spelling", languages=("en", "de", "fr"), words_per_language=300)


def test_spelling_encoder_reads_its_tokens_while_the_decoder_writes_characters(data_cache):
    chars = load_splits(SPELLING, 0, data_cache)
    words = word_splits(SPELLING, 0, data_cache)
    noisy_val = spelling_pairs(SPELLING, 0, words)["val"][0]
    for kind in ("bpe", "word"):
        cfg = SPELLING.model_copy(update={"tokenizer": kind, "vocab_size": 120})
        splits = load_splits(cfg, 0, data_cache)
        # The target side is the character model's, tensor for tensor: scores compare.
        for name in ("y_train", "y_val", "y_test"):
            assert torch.equal(getattr(splits, name), getattr(chars, name)), (kind, name)
        assert splits.num_classes == chars.num_classes and not splits.shared_vocab
        # The source: the noisy spelling in this tokenizer's ids, fitted on training words only.
        source = fit_tokenizer(kind, words.train, 120)
        assert splits.vocab_size == source.vocab_size == splits.data_metrics["vocab_size"]
        assert torch.equal(splits.x_val, text.pad(source.encode(noisy_val), splits.x_val.shape[1]))
        assert splits.data_metrics["target_vocab_size"] == chars.num_classes
    bpe = load_splits(
        SPELLING.model_copy(update={"tokenizer": "bpe", "vocab_size": 120}), 0, data_cache
    )
    # A merge only joins tokens: BPE never lengthens a word, and here it shortens them.
    bpe_lengths = (bpe.x_val != PAD_ID).sum(dim=1)
    char_lengths = (chars.x_val != PAD_ID).sum(dim=1)
    assert (bpe_lengths <= char_lengths).all()
    assert bpe.data_metrics["tokens_per_word/val"] < chars.data_metrics["tokens_per_word/val"]


def test_word_tokens_leave_the_spelling_model_nearly_no_input_on_held_out_words(data_cache):
    """By construction, not a claim: under word tokens a noisy held-out spelling is <unk>
    unless its typos happen to make a training word, and that word is never the target (splits
    are disjoint by word). Whatever a model computes from its input, it can be right on at most
    one held-out word per distinct input (the words are distinct), so exact match is bounded
    by (distinct inputs) / words: about 0 here, against about 1 under characters."""
    cfg = SPELLING.model_copy(update={"tokenizer": "word"})
    words = word_splits(cfg, 0, data_cache)
    vocabulary = set(words.train)
    for name in ("val", "test"):
        noisy, targets = spelling_pairs(cfg, 0, words)[name]
        assert not vocabulary & set(targets)  # no held-out word is known
        known = [(n, t) for n, t in zip(noisy, targets, strict=True) if n in vocabulary]
        assert all(n != t for n, t in known)  # a known input is another word
        splits = load_splits(cfg, 0, data_cache)
        x = getattr(splits, f"x_{name}")
        assert x.shape[1] == 1 and (x == UNK_ID).sum() == len(targets) - len(known)
        assert splits.data_metrics[f"oov_rate/{name}"] == 1 - len(known) / len(targets) > 0.97
        bound = len({tuple(row) for row in x.tolist()}) / len(targets)
        assert bound < 0.05, (name, bound)
        chars = getattr(load_splits(SPELLING, 0, data_cache), f"x_{name}")
        assert len({tuple(row) for row in chars.tolist()}) / len(targets) > 0.9


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming file, field, value and what is allowed; exit 2 before training


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ('tokenizer = "sentencepiece"', ["data.tokenizer = 'sentencepiece'", "'bpe'"]),
        ("vocab_size = 8", ["data.vocab_size = 8", "greater than or equal to 32"]),
        ('languages = ["en", "xx"]', ["data.languages", "'xx' is not a wordfreq", "'fi'"]),
        ('languages = ["en"]', ["data.languages = ['en']", "2 or more"]),
        ('shared_words = "keep"', ["data.shared_words = 'keep'", "'most_frequent'"]),
    ],
)
def test_bad_text_fields_are_one_line_errors(tmp_path, data, words):
    path = tmp_path / "bad.toml"
    path.write_text(f'name = "t"\n[data]\nname = "words"\n{data}\n[model]\narch = "textcnn"\n')
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ('[data]\nname = "words"\n[model]\narch = "mlp"', ["mlp reads numbers", "textcnn"]),
        ('[data]\nname = "words"\n[model]\narch = "cnn"', ["cnn reads numbers"]),
        ('[model]\narch = "textcnn"', ["textcnn reads token ids"]),
        ('[data]\nname = "words"\n[model]\narch = "rnn"\npatch = 2', ["model.patch = 2"]),
        ('[data]\nname = "words"\n[model]\narch = "seq2seq"', ["spelling", "seq2seq"]),
        ('[data]\nname = "spelling"\n[model]\narch = "textcnn"', ["spelling", "seq2seq"]),
        (
            '[data]\nname = "spelling"\ntokenizer = "bpe"\n[model]\narch = "seq2seq"\n'
            "share_embeddings = true",
            ["model.share_embeddings = true", "data.tokenizer = 'bpe'", "allowed:"],
        ),
        ('[data]\ntokenizer = "bpe"', ["data.tokenizer = 'bpe' applies to words and spelling"]),
        ('[data]\nname = "words"\nlength = 20', ["data.length = 20 applies to mnist1d only"]),
        ('[data]\nname = "words"\ntypo_rate = 0.2', ["data.typo_rate", "spelling only"]),
    ],
)
def test_models_and_data_that_do_not_fit_are_rejected(tmp_path, body, words):
    path = tmp_path / "bad.toml"
    path.write_text(f'name = "t"\n{body}\n')
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    for word in words:
        assert word in str(caught.value)


def test_cli_bad_tokenizer_exits_2_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.toml"
    path.write_text('name = "t"\n[data]\nname = "words"\n[model]\narch = "textcnn"\n')
    before = set(os.listdir(tmp_path))
    assert main(["train", str(path), "--set", "data.tokenizer=wordpiece"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.tokenizer = 'wordpiece'" in err[0] and "'bpe'" in err[0]
    assert set(os.listdir(tmp_path)) == before

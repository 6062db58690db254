"""Training data the program makes itself (no downloads).

Every task gives batches of (inputs (T, B) token ids, targets (T, B) ids with
IGNORE where no answer is due), time-major, padded at the end; the loss is the
sequence loss over the answer steps only.

- year: find the year in a generated English sentence, character level. The
  year (1800-2099) sits anywhere in one of many templates, often with other
  numbers around it (ages, times, counts, prices); after the sentence the model
  reads "=" and three "#" and must emit the year's four digits on those steps.
- recall: remember the first symbol of a sequence across `lag` steps of random
  distractors, then output it at the query mark (the long-lag task that tanh
  Elman networks fail and gated cells solve).
- CharText: next-character prediction on any text file, read as one stream.
"""
import numpy as np

IGNORE = -100   # torch's ignore_index: no loss at this step

# ---------------------------------------------------------------- the year task

PAD, SEP, QUERY = "\0", "=", "#"
YEAR_CHARS = PAD + SEP + QUERY + " abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789,.'$:-?"
YEAR_RANGE = (1800, 2099)

NAMES = ["I", "Maria", "Tom", "my sister", "Ahmed", "the old man", "Yuki", "Grandpa", "Lena", "we",
         "our teacher", "Carlos", "she", "he", "Priya", "the band", "my uncle", "Olga", "they", "Sam"]
PLACES = ["Nepal", "Paris", "Lima", "Cairo", "Oslo", "Kyoto", "Texas", "Rome", "Accra", "Quebec",
          "Bali", "Dublin", "Seoul", "Chile", "Vienna", "the coast", "the city", "Iceland", "Goa", "Berlin"]
THINGS = ["a red bicycle", "the house", "a small boat", "an old piano", "the farm", "a camera",
          "two goats", "a bakery", "the painting", "a guitar", "the shop", "a blue car"]
EVENTS = ["the flood", "the war", "the fire", "the big storm", "the strike", "the fair",
          "the wedding", "the eclipse", "the election", "the festival"]
MONTHS = ["January", "March", "May", "July", "August", "October", "December", "June"]

# {y}: the year; other slots are filled from the lists or with distractor numbers.
TEMPLATES = [
    "{name} went to {place} in {y}.",
    "In {y}, {name} went to {place}.",
    "{y} was the year {name} moved to {place}.",
    "{name} bought {thing} in {y} for ${price}.",
    "Back in {y} {name} lived in {place}.",
    "{name} was born in {place} in {y}.",
    "The photo is from {month} {y}, in {place}.",
    "{name} was {age} in {y}, when {event} came.",
    "After {event} of {y}, {name} left {place}.",
    "{name} sold {thing} in {y}.",
    "It was {month} {day}, {y}, at {hour}:{minute}.",
    "{name} met {name2} in {place} in {y}.",
    "Since {y}, {name} has visited {place} {count} times.",
    "{event} hit {place} in {y}.",
    "{name} wrote to {name2} from {place} in {y}.",
    "By {y} {name} had {count} children.",
    "{name} left {place} at {age}, in {y}.",
    "Room {room}: {name} stayed there in {y}.",
    "The {y} map of {place} shows {count} roads.",
    "{name} said {event} was in {y}, not {decoy}.",
    "{name} started school in {place} in {month} {y}.",
    "{name} won {thing} at the fair of {y}.",
    "In the spring of {y} {name} planted {count} trees.",
    "{name}'s house in {place} dates from {y}.",
    "Was it {y}? {name} thinks so.",
    "{count} people saw {event} in {place} in {y}.",
    "{name} paid ${price} for {thing} in {y}.",
    "From {y} on, {name} worked in {place}.",
    "The letter, dated {day} {month} {y}, came from {place}.",
    "{name} and {name2} married in {y} in {place}.",
]


def _pick(rng, items):
    return items[rng.integers(len(items))]


def year_sentence(rng):
    """(sentence, year as a 4-char string) from a random template."""
    year = int(rng.integers(YEAR_RANGE[0], YEAR_RANGE[1] + 1))
    template = _pick(rng, TEMPLATES)
    name = _pick(rng, NAMES)
    text = template.format(
        y=year, name=name[0].upper() + name[1:] if template.startswith("{name}") else name,
        name2=_pick(rng, NAMES), place=_pick(rng, PLACES), thing=_pick(rng, THINGS),
        event=_pick(rng, EVENTS), month=_pick(rng, MONTHS), age=rng.integers(2, 95),
        day=rng.integers(1, 29), hour=rng.integers(1, 13), minute=f"{rng.integers(0, 60):02d}",
        count=rng.integers(2, 60), price=rng.integers(3, 999), room=rng.integers(100, 999),
        decoy=f"{rng.integers(1, 13)}:{rng.integers(0, 60):02d}")
    text = text[0].upper() + text[1:]
    return text, str(year)


class YearTask:
    """Find the year: input sentence + "=###", targets the year's digits on those 4 steps."""

    name = "year"
    vocab = YEAR_CHARS
    n_classes = len(YEAR_CHARS)

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.index = {c: i for i, c in enumerate(self.vocab)}

    def encode(self, text):
        return [self.index[c] for c in text]

    def batch(self, size):
        """inputs (T, B) and targets (T, B) int64 arrays, padded to the longest sentence."""
        rows = [year_sentence(self.rng) for _ in range(size)]
        T = max(len(s) for s, _ in rows) + 4
        inputs = np.full((T, size), self.index[PAD], np.int64)
        targets = np.full((T, size), IGNORE, np.int64)
        for b, (sentence, year) in enumerate(rows):
            ids = self.encode(sentence + SEP + QUERY * 3)
            inputs[:len(ids), b] = ids
            # the digits are due on the "=" step and the three "#" steps
            targets[len(sentence):len(ids), b] = self.encode(year)
        return inputs, targets


# ---------------------------------------------------------------- the long-lag task

class RecallTask:
    """Remember the first of `lag + 2` symbols; output it at the final query step.

    Tokens: 0..K-1 the symbols to remember, K..2K-1 distractors, 2K the query.
    Chance level is 1/K.
    """

    name = "recall"

    def __init__(self, lag=40, symbols=8, seed=0):
        if lag < 1 or symbols < 2:
            raise ValueError(f"lag, symbols: expected lag >= 1 and symbols >= 2, got lag={lag}, symbols={symbols}")
        self.lag, self.symbols = lag, symbols
        self.rng = np.random.default_rng(seed)
        self.n_classes = 2 * symbols + 1
        self.vocab = None

    def batch(self, size):
        K, T = self.symbols, self.lag + 2
        first = self.rng.integers(0, K, size)
        inputs = self.rng.integers(K, 2 * K, (T, size))   # distractors
        inputs[0] = first
        inputs[-1] = 2 * K
        targets = np.full((T, size), IGNORE, np.int64)
        targets[-1] = first
        return inputs.astype(np.int64), targets


# ---------------------------------------------------------------- character LM on a text file

class CharText:
    """A text file as a character stream for language modelling with truncated BPTT.

    The text is split into `batch` contiguous streams; chunks(k, batch) yields
    (inputs (k, batch), targets) with targets the next character, for one pass.
    """

    name = "text"

    def __init__(self, text, valid_fraction=0.05):
        if len(text) < 100:
            raise ValueError(f"text: expected at least 100 characters, got {len(text)}")
        self.vocab = "".join(sorted(set(text)))
        self.n_classes = len(self.vocab)
        self.index = {c: i for i, c in enumerate(self.vocab)}
        ids = np.array([self.index[c] for c in text], np.int64)
        cut = int(len(ids) * (1 - valid_fraction))
        self.train_ids, self.valid_ids = ids[:cut], ids[cut:]

    @staticmethod
    def streams(ids, batch):
        """(L, batch) array: column b is the b-th contiguous piece of ids (the rest dropped)."""
        length = (len(ids) - 1) // batch
        if length < 2:
            raise ValueError(f"batch: expected at most {(len(ids) - 1) // 2} streams for this text, got {batch}")
        cols = ids[:length * batch + 1]
        inputs = np.stack([cols[b * length:(b + 1) * length] for b in range(batch)], axis=1)
        targets = np.stack([cols[b * length + 1:(b + 1) * length + 1] for b in range(batch)], axis=1)
        return inputs, targets

    def chunks(self, k, batch, valid=False, part=0, parts=1):
        """One pass over the (train or valid) text, or over its part-th of `parts` pieces
        (one per process under DistributedDataParallel)."""
        ids = self.valid_ids if valid else self.train_ids
        ids = ids[len(ids) * part // parts:len(ids) * (part + 1) // parts]
        inputs, targets = self.streams(ids, batch)
        for t0 in range(0, len(inputs), k):
            yield inputs[t0:t0 + k], targets[t0:t0 + k]

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)

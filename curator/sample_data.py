"""The project's own sample data: a small, seeded instruction-tuning stream in three versions.

One builder serves the tests, the README and the app demo. Every row is real, checkable content
(arithmetic, conversions, dates, ...) made from fixed word lists and a seeded ``random.Random``,
so a run is byte-identical to the last one. Ground truth (family, which rows are noisy and how)
lives in ``labels.json``, never in the rows themselves.

    python -m curator.sample_data --out sample_data
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from curator.records import sample_id_for

SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "sample_data"

TARGET_FAMILY = "arithmetic"
V1_FAMILIES = (
    "arithmetic",
    "unit_conversion",
    "string_ops",
    "capitals",
    "word_relations",
    "sentiment",
    "date_arithmetic",
)
NEW_FAMILY_V2 = "python_oneliners"
FAMILIES = (*V1_FAMILIES, NEW_FAMILY_V2)
NOISE_KINDS = ("swapped_response", "truncated_response", "wrong_answer")

FILES = {
    "v1": "v1.jsonl",
    "v2": "v2.jsonl",
    "v3": "v3.csv",
    "target": "target.jsonl",
    "eval": "eval.jsonl",
    "malformed": "malformed.jsonl",
    "labels": "labels.json",
}
VERSIONS = ("v1", "v2", "v3")

# Line number (1-based) -> what is wrong with it. Every other line of malformed.jsonl is a good row.
MALFORMED_BAD_LINES = {
    3: "broken JSON (the closing brace is missing)",
    4: "no response field",
    6: "empty response",
    7: "response is a number, not text",
    8: "prompt is a list, not text",
    10: "invalid UTF-8 (a Latin-1 byte 0xE1)",
    11: "blank line",
    12: "a JSON array, not an object",
}
MALFORMED_LINE_COUNT = 14

# Rows per family in each version (duplicates and noisy rows come on top).
_V1_COUNTS = {
    "arithmetic": 45,
    "unit_conversion": 45,
    "string_ops": 45,
    "capitals": 40,
    "word_relations": 40,
    "sentiment": 45,
    "date_arithmetic": 40,
}
_V2_COUNTS = {
    "python_oneliners": 40,
    "arithmetic": 12,
    "unit_conversion": 12,
    "string_ops": 12,
    "capitals": 12,
    "word_relations": 12,
    "sentiment": 13,
    "date_arithmetic": 12,
}
_V2_DUPLICATES = 10  # exact copies of v1 rows, half of them alpaca rows with a non-empty input
_V2_NOISE = {"swapped_response": 8, "truncated_response": 7}
_V3_COUNTS = {
    "arithmetic": 20,
    "python_oneliners": 20,
    "sentiment": 15,
    "date_arithmetic": 15,
    "unit_conversion": 15,
}
_V3_DUPLICATES = 5  # exact copies of clean v2 rows (messages -> CSV)
_V3_NOISE = {"wrong_answer": 4, "swapped_response": 3, "truncated_response": 3}
_TARGET_ROWS = 30
_EVAL_ROWS = 40
# Families whose responses end with the answer, so cutting them in half removes it.
_TRUNCATABLE = ("arithmetic", "unit_conversion", "capitals", "word_relations", "date_arithmetic")


@dataclass(frozen=True)
class Row:
    """One generated example in alpaca shape; other schemas render ``prompt`` / ``output``."""

    family: str
    instruction: str
    input: str
    output: str
    noise_kind: str | None = None

    @property
    def prompt(self) -> str:
        """What ingest makes of an alpaca row: instruction, plus a blank line and the input."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction

    @property
    def sample_id(self) -> str:
        return sample_id_for(
            [
                {"role": "user", "content": self.prompt},
                {"role": "assistant", "content": self.output},
            ]
        )


# ---------------------------------------------------------------------------------------------
# Fixed vocabularies
# ---------------------------------------------------------------------------------------------

# fmt: off
_NAMES = (
    "Ava", "Ben", "Chloe", "Dev", "Emma", "Finn", "Grace", "Hugo", "Isla", "Jack", "Kai", "Lena",
    "Maya", "Noah", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara", "Uma", "Wes", "Yara", "Zoe",
)
_COUNTABLES = (
    "apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells", "stamps",
    "balloons", "crayons", "buttons",
)
_PRICED = (
    ("notebook", "notebooks"), ("pen", "pens"), ("ticket", "tickets"), ("mug", "mugs"),
    ("sandwich", "sandwiches"), ("toy car", "toy cars"), ("plant", "plants"),
    ("candle", "candles"),
)
_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"),
    ("Australia", "Canberra"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Iceland", "Reykjavík"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Turkey", "Ankara"), ("Peru", "Lima"),
    ("Chile", "Santiago"), ("Colombia", "Bogotá"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("Ireland", "Dublin"),
    ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Czechia", "Prague"), ("Morocco", "Rabat"),
    ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"), ("Cuba", "Havana"),
    ("New Zealand", "Wellington"), ("Switzerland", "Bern"), ("Belgium", "Brussels"),
    ("Pakistan", "Islamabad"), ("Iran", "Tehran"), ("Saudi Arabia", "Riyadh"),
    ("Malaysia", "Kuala Lumpur"), ("Ukraine", "Kyiv"),
)
_ANTONYMS = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("full", "empty"), ("strong", "weak"), ("rich", "poor"),
    ("tall", "short"), ("wet", "dry"), ("loud", "quiet"), ("young", "old"), ("clean", "dirty"),
    ("cheap", "expensive"), ("deep", "shallow"), ("thick", "thin"), ("heavy", "light"),
    ("win", "lose"), ("push", "pull"), ("arrive", "leave"), ("accept", "refuse"),
    ("include", "exclude"), ("increase", "decrease"), ("ancient", "modern"), ("brave", "cowardly"),
    ("generous", "selfish"), ("rough", "smooth"), ("narrow", "wide"), ("sharp", "blunt"),
    ("visible", "invisible"), ("victory", "defeat"), ("friend", "enemy"), ("question", "answer"),
    ("buy", "sell"), ("remember", "forget"), ("above", "below"),
)
_SYNONYMS = (
    ("big", "large"), ("small", "little"), ("fast", "quick"), ("happy", "glad"),
    ("begin", "start"), ("end", "finish"), ("smart", "clever"), ("easy", "simple"),
    ("hard", "difficult"), ("rich", "wealthy"), ("shut", "close"), ("gift", "present"),
    ("buy", "purchase"), ("help", "assist"), ("choose", "select"), ("reply", "respond"),
    ("quiet", "silent"), ("calm", "peaceful"), ("funny", "amusing"), ("huge", "enormous"),
    ("angry", "furious"), ("correct", "right"), ("student", "pupil"), ("fix", "repair"),
)
_WORDS = (
    "planet", "garden", "bridge", "candle", "rocket", "banana", "window", "pencil", "forest",
    "guitar", "harbor", "island", "jacket", "kitten", "ladder", "market", "needle", "orange",
    "pepper", "rabbit", "silver", "tunnel", "valley", "wizard", "yellow", "zipper", "anchor",
    "bottle", "castle", "dragon", "engine", "falcon", "mirror", "puzzle", "summer", "winter",
    "coffee", "butter", "letter", "cabbage", "balloon", "library", "mountain", "penguin",
    "teacher", "blanket", "volcano", "holiday",
)
_PRODUCTS = (
    "blender", "headset", "backpack", "coffee maker", "phone case", "desk lamp", "keyboard",
    "water bottle", "umbrella", "tent", "vacuum cleaner", "toaster", "jacket", "office chair",
    "kettle", "mattress", "camera", "printer", "suitcase", "microwave",
)
_POSITIVE = (
    "The {p} works perfectly and was worth every penny.",
    "I love this {p}; I use it every day.",
    "Great {p}, sturdy and easy to use.",
    "This {p} exceeded my expectations.",
    "The {p} arrived early and looks fantastic.",
    "Best {p} I have ever owned.",
    "Excellent {p}, I would happily buy it again.",
    "My whole family adores this {p}.",
    "The {p} is well made and a joy to use.",
    "Five stars, the {p} does exactly what it promises.",
)
_NEGATIVE = (
    "The {p} broke after two days.",
    "I regret buying this {p}; it feels cheap.",
    "Terrible {p}, it stopped working within a week.",
    "This {p} is flimsy and overpriced.",
    "The {p} arrived damaged and support ignored me.",
    "Worst {p} I have ever bought.",
    "Do not buy this {p}, it is a waste of money.",
    "The {p} is noisy and hard to use.",
    "My {p} fell apart after one use.",
    "One star, the {p} never worked properly.",
)
# (from unit, to unit, factor): multiply to convert; the reverse direction divides exactly.
_UNITS = (
    ("kilometers", "meters", 1000), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
    ("minutes", "seconds", 60), ("days", "hours", 24), ("feet", "inches", 12),
    ("meters", "centimeters", 100), ("liters", "milliliters", 1000), ("weeks", "days", 7),
    ("yards", "feet", 3),
)
# fmt: on

_LIST_VARS = ("nums", "values", "scores", "data", "items", "xs", "prices", "ages")
_STR_VARS = ("text", "name", "word", "line", "s", "title")

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# ---------------------------------------------------------------------------------------------
# Family generators: (rng, wrong) -> (instruction, input, output). ``wrong`` gives a plausible
# but incorrect answer in the family's usual wording (the "wrong_answer" noise).
# ---------------------------------------------------------------------------------------------

Generated = tuple[str, str, str]


def _off_by(rng: random.Random, value: int, wrong: bool) -> int:
    return value + rng.choice((-3, -2, -1, 1, 2, 3)) if wrong else value


def _arithmetic(rng: random.Random, wrong: bool) -> Generated:
    name, things = rng.choice(_NAMES), rng.choice(_COUNTABLES)
    kind = rng.choice(("add", "sub", "mul", "div", "cost"))
    if kind == "add":
        a, b = rng.randint(3, 60), rng.randint(2, 40)
        question = (
            f"{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?"
        )
        expr, result = f"{a} + {b}", a + b
    elif kind == "sub":
        a = rng.randint(10, 90)
        b = rng.randint(2, a - 1)
        question = f"{name} had {a} {things} and gave away {b}. How many {things} are left?"
        expr, result = f"{a} - {b}", a - b
    elif kind == "mul":
        a, b = rng.randint(3, 12), rng.randint(2, 12)
        question = f"A box holds {a} {things}. How many {things} are in {b} boxes?"
        expr, result = f"{a} * {b}", a * b
    elif kind == "div":
        each, friends = rng.randint(2, 12), rng.randint(2, 9)
        question = (
            f"{name} shares {each * friends} {things} equally among {friends} friends. "
            f"How many {things} does each friend get?"
        )
        expr, result = f"{each * friends} / {friends}", each
    else:
        (one, many), price, qty = rng.choice(_PRICED), rng.randint(2, 15), rng.randint(2, 9)
        question = f"A {one} costs ${price}. How much do {qty} {many} cost?"
        shown = _off_by(rng, price * qty, wrong)
        return question, "", f"{qty} * ${price} = ${shown}. The answer is ${shown}."
    shown = _off_by(rng, result, wrong)
    return question, "", f"{expr} = {shown}. The answer is {shown}."


def _unit_conversion(rng: random.Random, wrong: bool) -> Generated:
    if rng.random() < 0.15:
        celsius = rng.randrange(-20, 105, 5)
        fahrenheit = celsius * 9 // 5 + 32
        shown = fahrenheit + 10 if wrong else fahrenheit
        return (
            f"Convert {celsius} degrees Celsius to Fahrenheit.",
            "",
            f"{celsius} degrees Celsius is {shown} degrees Fahrenheit.",
        )
    big, small, factor = rng.choice(_UNITS)
    amount = rng.randint(2, 40)
    if rng.random() < 0.6:
        src, dst, value, result = big, small, amount, amount * factor
    else:
        src, dst, value, result = small, big, amount * factor, amount
    shown = result * 10 if wrong else result
    return f"Convert {value} {src} to {dst}.", "", f"{value} {src} is {shown} {dst}."


def _string_ops(rng: random.Random, wrong: bool) -> Generated:
    word = rng.choice(_WORDS)
    kind = rng.choice(("reverse", "upper", "count", "length", "sort"))
    if kind == "reverse":
        # Wrong: the word left as it is (no word in _WORDS is a palindrome).
        return "Reverse the letters of the word below.", word, word if wrong else word[::-1]
    if kind == "upper":
        return (
            "Write the word below in uppercase.",
            word,
            word.capitalize() if wrong else word.upper(),
        )
    if kind == "count":
        letter = rng.choice(sorted(set(word)))
        count = word.count(letter) + (1 if wrong else 0)
        return (
            f"How many times does the letter '{letter}' appear in the word below?",
            word,
            str(count),
        )
    if kind == "length":
        return "How many letters are in the word below?", word, str(len(word) + (1 if wrong else 0))
    answer = "".join(sorted(word, reverse=wrong))
    return "Sort the letters of the word below alphabetically.", word, answer


def _capitals(rng: random.Random, wrong: bool) -> Generated:
    index = rng.randrange(len(_CAPITALS))
    country, capital = _CAPITALS[index]
    if wrong:  # a real capital, of the wrong country
        other = _CAPITALS[(index + rng.randint(1, len(_CAPITALS) - 1)) % len(_CAPITALS)]
        if rng.random() < 0.5:
            return (
                f"What is the capital of {country}?",
                "",
                f"The capital of {country} is {other[1]}.",
            )
        return (
            f"{capital} is the capital of which country?",
            "",
            f"{capital} is the capital of {other[0]}.",
        )
    if rng.random() < 0.5:
        return f"What is the capital of {country}?", "", f"The capital of {country} is {capital}."
    return (
        f"{capital} is the capital of which country?",
        "",
        f"{capital} is the capital of {country}.",
    )


def _word_relations(rng: random.Random, wrong: bool) -> Generated:
    relation, pairs = rng.choice((("antonym", _ANTONYMS), ("synonym", _SYNONYMS)))
    a, b = rng.choice(pairs)
    if rng.random() < 0.5:
        a, b = b, a
    if wrong:  # an unrelated word
        b = rng.choice(_WORDS)
    article = "an" if relation == "antonym" else "a"
    return (
        f'What is {article} {relation} of "{a}"?',
        "",
        f'{article.capitalize()} {relation} of "{a}" is "{b}".',
    )


def _sentiment(rng: random.Random, wrong: bool) -> Generated:
    positive = rng.random() < 0.5
    review = rng.choice(_POSITIVE if positive else _NEGATIVE).format(p=rng.choice(_PRODUCTS))
    label = "Positive" if positive != wrong else "Negative"
    return "Is the sentiment of this review positive or negative?", review, label


def _date_arithmetic(rng: random.Random, wrong: bool) -> Generated:
    start = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randrange(6 * 365))
    slip = dt.timedelta(days=rng.choice((-1, 1)) if wrong else 0)
    kind = rng.choice(("after", "before", "weekday", "between"))
    if kind in ("after", "before"):
        days = rng.randint(2, 60)
        end = start + dt.timedelta(days=days if kind == "after" else -days) + slip
        return (
            f"What date is {days} days {kind} {start.isoformat()}?",
            "",
            f"{days} days {kind} {start.isoformat()} is {end.isoformat()}.",
        )
    if kind == "weekday":
        weekday = _WEEKDAYS[(start + slip).weekday()]
        return (
            f"What day of the week was {start.isoformat()}?",
            "",
            f"{start.isoformat()} was a {weekday}.",
        )
    end = start + dt.timedelta(days=rng.randint(3, 90))
    days = (end - start).days + slip.days
    return (
        f"How many days are there from {start.isoformat()} to {end.isoformat()}?",
        "",
        f"The number of days from {start.isoformat()} to {end.isoformat()} is {days}.",
    )


def _python_oneliners(rng: random.Random, wrong: bool) -> Generated:
    v, s, k = rng.choice(_LIST_VARS), rng.choice(_STR_VARS), rng.randint(2, 9)
    letter = rng.choice("aeiost")
    templates = (  # (task, right, wrong)
        (
            f"returns the squares of the numbers in the list `{v}`",
            f"[x ** 2 for x in {v}]",
            f"[x * 2 for x in {v}]",
        ),
        (
            f"keeps only the numbers greater than {k} in the list `{v}`",
            f"[x for x in {v} if x > {k}]",
            f"[x for x in {v} if x < {k}]",
        ),
        (
            f"returns the sum of the even numbers in the list `{v}`",
            f"sum(x for x in {v} if x % 2 == 0)",
            f"sum(x for x in {v} if x % 2 == 1)",
        ),
        (f"reverses the string `{s}`", f"{s}[::-1]", f"{s}[1:]"),
        (
            f"counts how many times '{letter}' occurs in the string `{s}`",
            f"{s}.count('{letter}')",
            f"{s}.find('{letter}')",
        ),
        (f"returns the last {k} items of the list `{v}`", f"{v}[-{k}:]", f"{v}[:{k}]"),
        (f"returns the first {k} items of the list `{v}`", f"{v}[:{k}]", f"{v}[-{k}:]"),
        (f"returns the largest value in the list `{v}`", f"max({v})", f"min({v})"),
        (f"returns the number of distinct items in the list `{v}`", f"len(set({v}))", f"len({v})"),
        (
            f"returns the items of the list `{v}` sorted from largest to smallest",
            f"sorted({v}, reverse=True)",
            f"sorted({v})",
        ),
        (
            f"checks whether every number in the list `{v}` is positive",
            f"all(x > 0 for x in {v})",
            f"any(x > 0 for x in {v})",
        ),
        (
            f"multiplies every number in the list `{v}` by {k}",
            f"[x * {k} for x in {v}]",
            f"[x + {k} for x in {v}]",
        ),
        (f"returns the string `{s}` in lowercase", f"{s}.lower()", f"{s}.upper()"),
        (f"splits the string `{s}` into words", f"{s}.split()", f"list({s})"),
    )
    task, right, bad = rng.choice(templates)
    return f"Write a Python one-liner that {task}.", "", bad if wrong else right


GENERATORS: dict[str, Callable[[random.Random, bool], Generated]] = {
    "arithmetic": _arithmetic,
    "unit_conversion": _unit_conversion,
    "string_ops": _string_ops,
    "capitals": _capitals,
    "word_relations": _word_relations,
    "sentiment": _sentiment,
    "date_arithmetic": _date_arithmetic,
    "python_oneliners": _python_oneliners,
}


# ---------------------------------------------------------------------------------------------
# Building the versions
# ---------------------------------------------------------------------------------------------


class _Pool:
    """Draws rows whose prompts have not been used anywhere in the data set yet."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seen: set[str] = set()

    def draw(self, family: str, wrong: bool = False) -> Row:
        for _ in range(10_000):
            row = Row(family, *GENERATORS[family](self.rng, wrong))
            if row.prompt not in self.seen:
                self.seen.add(row.prompt)
                return row
        raise RuntimeError(f"family {family!r} ran out of distinct prompts")

    def draw_many(self, counts: dict[str, int]) -> list[Row]:
        return [self.draw(family) for family, n in counts.items() for _ in range(n)]

    def noisy(self, kind: str, families: Sequence[str]) -> Row:
        """A fresh prompt with a wrong response (its prompt is never a clean row's prompt)."""
        if kind == "wrong_answer":
            return replace(self.draw(self.rng.choice(families), wrong=True), noise_kind=kind)
        if kind == "truncated_response":
            row = self.draw(self.rng.choice([f for f in families if f in _TRUNCATABLE]))
            words = row.output.split(" ")
            return replace(row, output=" ".join(words[: len(words) // 2]), noise_kind=kind)
        family = self.rng.choice(families)
        row = self.draw(family)
        other_family = self.rng.choice([f for f in families if f != family])
        other = Row(other_family, *GENERATORS[other_family](self.rng, False))
        return replace(row, output=other.output, noise_kind=kind)

    def noisy_many(self, counts: dict[str, int], families: Sequence[str]) -> list[Row]:
        return [self.noisy(kind, families) for kind, n in counts.items() for _ in range(n)]


def _pick_duplicates(rng: random.Random, rows: Sequence[Row], n: int) -> list[Row]:
    """Clean rows to repeat, half with an alpaca input (if any), so the rendering is exercised."""
    clean = [r for r in rows if r.noise_kind is None]
    with_input = [r for r in clean if r.input]
    without = [r for r in clean if not r.input]
    half = min(n // 2, len(with_input))
    return rng.sample(with_input, half) + rng.sample(without, n - half)


def build(seed: int = 0) -> dict[str, list[Row]]:
    """All rows, by split: v1, v2, v3 (the stream), target, eval, malformed_good."""
    pool = _Pool(seed)
    v1 = pool.draw_many(_V1_COUNTS)
    pool.rng.shuffle(v1)

    v2 = pool.draw_many(_V2_COUNTS)
    v2 += _pick_duplicates(pool.rng, v1, _V2_DUPLICATES)
    v2 += pool.noisy_many(_V2_NOISE, V1_FAMILIES)
    pool.rng.shuffle(v2)

    v3 = pool.draw_many(_V3_COUNTS)
    v1_ids = {r.sample_id for r in v1}
    v3 += _pick_duplicates(pool.rng, [r for r in v2 if r.sample_id not in v1_ids], _V3_DUPLICATES)
    v3 += pool.noisy_many(_V3_NOISE, FAMILIES)
    pool.rng.shuffle(v3)

    target = [pool.draw(TARGET_FAMILY) for _ in range(_TARGET_ROWS)]
    held_out = [pool.draw(TARGET_FAMILY) for _ in range(_EVAL_ROWS)]
    good = [
        pool.draw(f)
        for f in (
            "capitals",
            "string_ops",
            "arithmetic",
            "sentiment",
            "unit_conversion",
            "date_arithmetic",
        )
    ]
    return {
        "v1": v1,
        "v2": v2,
        "v3": v3,
        "target": target,
        "eval": held_out,
        "malformed_good": good,
    }


# ---------------------------------------------------------------------------------------------
# Writers
# ---------------------------------------------------------------------------------------------


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _alpaca(row: Row) -> dict[str, Any]:
    return {
        "instruction": row.instruction,
        "input": row.input,
        "output": row.output,
        "family": row.family,
    }


def _messages(row: Row) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": row.prompt},
            {"role": "assistant", "content": row.output},
        ],
        "family": row.family,
    }


def _csv_text(rows: Sequence[Row]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["prompt", "response", "family"])
    writer.writerows([row.prompt, row.output, row.family] for row in rows)
    return buffer.getvalue()


def _malformed_bytes(good: Sequence[Row]) -> bytes:
    """Good prompt/response rows with the bad lines of MALFORMED_BAD_LINES in between."""

    def line(record: Any) -> bytes:
        return json.dumps(record, ensure_ascii=False).encode("utf-8")

    reverse = ["Reverse the letters of the word below.", "stone"]
    bad = {
        3: b'{"prompt": "What is 6 + 7?", "response": "6 + 7 = 13. The answer is 13."',
        4: line({"prompt": "What is the capital of Peru?", "family": "capitals"}),
        6: line(
            {"prompt": "Convert 4 hours to minutes.", "response": "", "family": "unit_conversion"}
        ),
        7: line({"prompt": "What is 9 * 8?", "response": 72, "family": "arithmetic"}),
        8: line({"prompt": reverse, "response": "enots", "family": "string_ops"}),
        10: (  # a Latin-1 export: "á" is the single byte 0xE1
            '{"prompt": "What is the capital of Colombia?", '
            '"response": "The capital of Colombia is Bogotá.", "family": "capitals"}'
        ).encode("latin-1"),
        11: b"",
        12: line(["What is 2 + 2?", "4"]),
    }
    goods = iter(good)
    lines = []
    for number in range(1, MALFORMED_LINE_COUNT + 1):
        if number in bad:
            lines.append(bad[number])
        else:
            row = next(goods)
            lines.append(line({"prompt": row.prompt, "response": row.output, "family": row.family}))
    return b"\n".join(lines) + b"\n"


def labels_for(splits: dict[str, list[Row]]) -> dict[str, dict[str, Any]]:
    """sample_id -> ground truth, for every row of the stream (v1, v2, v3)."""
    labels: dict[str, dict[str, Any]] = {}
    for version in VERSIONS:
        for row in splits[version]:
            entry = labels.setdefault(
                row.sample_id,
                {
                    "family": row.family,
                    "noisy": row.noise_kind is not None,
                    "noise_kind": row.noise_kind,
                    "versions": [],
                },
            )
            if version not in entry["versions"]:
                entry["versions"].append(version)
    return labels


def _labels_text(labels: dict[str, dict[str, Any]]) -> str:
    """One entry per line, sorted by id: valid JSON that diffs well."""
    entries = [
        f"{json.dumps(key)}: {json.dumps(labels[key], sort_keys=True)}" for key in sorted(labels)
    ]
    return "{\n" + ",\n".join(entries) + "\n}\n"


def generate(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write every sample-data file into ``out_dir``; returns name -> path (keys of FILES)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = build(seed)
    contents: dict[str, bytes] = {
        "v1": "".join(_json_line(_alpaca(r)) for r in splits["v1"]).encode(),
        "v2": "".join(_json_line(_messages(r)) for r in splits["v2"]).encode(),
        "v3": _csv_text(splits["v3"]).encode(),
        "target": "".join(
            _json_line({"question": r.prompt, "answer": r.output, "family": r.family})
            for r in splits["target"]
        ).encode(),
        "eval": "".join(
            _json_line({"prompt": r.prompt, "response": r.output, "family": r.family})
            for r in splits["eval"]
        ).encode(),
        "malformed": _malformed_bytes(splits["malformed_good"]),
        "labels": _labels_text(labels_for(splits)).encode(),
    }
    paths: dict[str, Path] = {}
    for key, data in contents.items():
        paths[key] = out_dir / FILES[key]
        paths[key].write_bytes(data)
    return paths


def ensure_sample_data(out_dir: Path = SAMPLE_DATA_DIR) -> Path:
    """The sample-data folder, generated first if any of its files is missing."""
    out_dir = Path(out_dir)
    if not all((out_dir / name).is_file() for name in FILES.values()):
        generate(out_dir)
    return out_dir


def load_labels(directory: Path = SAMPLE_DATA_DIR) -> dict[str, dict[str, Any]]:
    """sample_id -> {"family", "noisy", "noise_kind", "versions"} for the stream's rows."""
    return json.loads((Path(directory) / FILES["labels"]).read_text(encoding="utf-8"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write curator's sample data set.")
    parser.add_argument("--out", type=Path, default=SAMPLE_DATA_DIR, help="output folder")
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed (the committed files use 0)"
    )
    args = parser.parse_args(argv)
    for path in generate(args.out, args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

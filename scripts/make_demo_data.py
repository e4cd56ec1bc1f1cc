"""Write the bundled demo preference set: `cookbook/datasets/data/demo_{train,test}.jsonl`.

    python scripts/make_demo_data.py            # rewrite the two files (deterministic for --seed)
    python scripts/make_demo_data.py --check    # exit 1 if the committed files differ from a rebuild

Every pair asks one short question with a stated answer format ("Give a number only.", "Reply in
all caps.", "Answer with one word." ...). The chosen reply is correct AND follows the format; the
rejected one is wrong, evasive, or correct but ignores the format. The preference is therefore clear
and learnable by a small instruct model in minutes of CPU training, and pairs stay short (a few to
~30 tokens per reply) so each step is cheap. All questions, facts and replies are written here from
templates and random values; each prompt appears once, and test prompts never occur in train.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "cookbook" / "datasets" / "data"
TRAIN_PAIRS = 1200
TEST_PAIRS = 200

EVASIVE = [
    "I'm not sure.",
    "I don't know.",
    "That is hard to say.",
    "I would rather not answer that.",
    "Maybe ask someone else.",
    "It depends.",
]
NAMES = "Alice Ben Carla David Emma Farid Grace Hugo Iris Jonas Kira Liam Maya Noah Olga Pablo Quinn Rosa Sam Tara Umar Vera Wen Yuki Zoe".split()
WORDS = (
    "apple river garden pencil window rabbit candle forest guitar button jacket ladder mirror "
    "orange pillow rocket silver tomato violin wallet basket castle dragon engine flower hammer "
    "island kettle lemon marble needle ocean pepper quilt saddle tunnel umbrella valley wagon "
    "yellow zebra bridge cookie dinner feather glove honey lantern meadow puzzle shadow"
).split()
CATEGORIES = {
    "colors": "red blue green yellow purple orange pink brown".split(),
    "fruits": "apple banana cherry grape mango pear peach plum".split(),
    "animals": "dog cat horse rabbit tiger zebra sheep goat".split(),
    "tools": "hammer saw wrench drill shovel rake chisel pliers".split(),
}
OPPOSITES = [
    ("hot", "cold"),
    ("up", "down"),
    ("big", "small"),
    ("fast", "slow"),
    ("happy", "sad"),
    ("light", "dark"),
    ("open", "closed"),
    ("early", "late"),
    ("full", "empty"),
    ("old", "new"),
    ("wet", "dry"),
    ("high", "low"),
    ("loud", "quiet"),
    ("hard", "soft"),
    ("near", "far"),
    ("thick", "thin"),
    ("strong", "weak"),
    ("rich", "poor"),
    ("clean", "dirty"),
    ("long", "short"),
]
SOUNDS = [
    ("dog", "bark"),
    ("cat", "meow"),
    ("cow", "moo"),
    ("duck", "quack"),
    ("sheep", "baa"),
    ("lion", "roar"),
    ("owl", "hoot"),
    ("snake", "hiss"),
    ("horse", "neigh"),
    ("pig", "oink"),
    ("bee", "buzz"),
    ("frog", "croak"),
]
COLORS_OF = [
    ("grass", "green"),
    ("snow", "white"),
    ("coal", "black"),
    ("a ripe banana", "yellow"),
    ("the sky on a clear day", "blue"),
    ("a ripe tomato", "red"),
    ("a carrot", "orange"),
    ("milk", "white"),
    ("a lime", "green"),
    ("chocolate", "brown"),
    ("a fire truck", "red"),
]
PLURALS = [
    ("cat", "cats"),
    ("mouse", "mice"),
    ("child", "children"),
    ("foot", "feet"),
    ("box", "boxes"),
    ("tooth", "teeth"),
    ("man", "men"),
    ("goose", "geese"),
    ("baby", "babies"),
    ("leaf", "leaves"),
    ("city", "cities"),
    ("wolf", "wolves"),
    ("knife", "knives"),
    ("bus", "buses"),
    ("dish", "dishes"),
]
CAPITALS = [
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Germany", "Berlin"),
    ("Egypt", "Cairo"),
    ("Russia", "Moscow"),
    ("Canada", "Ottawa"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("China", "Beijing"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
    ("Austria", "Vienna"),
    ("Poland", "Warsaw"),
    ("Cuba", "Havana"),
]
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = "January February March April May June July August September October November December".split()
SIDES = [("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6), ("octagon", 8)]
LEGS = [
    ("spider", 8),
    ("dog", 4),
    ("bird", 2),
    ("ant", 6),
    ("cat", 4),
    ("chicken", 2),
    ("horse", 4),
    ("beetle", 6),
]
NUMBER_FORMATS = ["Give a number only.", "Answer with digits only.", "Reply with just the number."]

Pair = tuple[str, str, str, str]  # (question, chosen, rejected, kind of rejected reply)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _place(rng: random.Random, question: str, instruction: str) -> str:
    return f"{question} {instruction}" if rng.random() < 0.75 else f"{instruction} {question}"


def _reject(rng: random.Random, wrong: str, format_ignored: str | None) -> tuple[str, str]:
    options = [("wrong", wrong), ("evasive", rng.choice(EVASIVE))]
    if format_ignored is not None:
        options.append(("format", format_ignored))
    weights = [0.4, 0.25, 0.35][: len(options)]
    kind, text = rng.choices(options, weights=weights)[0]
    return text, kind


# -- numeric questions: the chosen reply is the number alone -----------------------------------------


def numeric_question(rng: random.Random) -> Pair:
    kind = rng.randrange(9)
    if kind == 0:
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        question, answer, sentence = f"What is {a} + {b}?", a + b, f"{a} plus {b} equals {a + b}."
    elif kind == 1:
        a, b = sorted((rng.randint(2, 99), rng.randint(2, 99)), reverse=True)
        question, answer, sentence = f"What is {a} - {b}?", a - b, f"{a} minus {b} is {a - b}."
    elif kind == 2:
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        question, answer, sentence = f"What is {a} times {b}?", a * b, f"{a} times {b} is {a * b}."
    elif kind == 3:
        n = rng.randint(2, 500)
        step = rng.choice(["after", "before"])
        answer = n + 1 if step == "after" else n - 1
        question, sentence = f"What number comes {step} {n}?", f"The number {step} {n} is {answer}."
    elif kind == 4:
        a, b = rng.sample(range(1, 1000), 2)
        which = rng.choice(["larger", "smaller"])
        answer = max(a, b) if which == "larger" else min(a, b)
        question, sentence = f"Which is {which}, {a} or {b}?", f"{answer} is the {which} number."
    elif kind == 5:
        word = rng.choice(WORDS)
        question, answer = f"How many letters are in the word '{word}'?", len(word)
        sentence = f"The word {word} has {answer} letters."
    elif kind == 6:
        shape, answer = rng.choice(SIDES)
        question, sentence = (
            f"How many sides does {_a(shape)} have?",
            f"{_a(shape).capitalize()} has {answer} sides.",
        )
    elif kind == 7:
        animal, answer = rng.choice(LEGS)
        question, sentence = (
            f"How many legs does {_a(animal)} have?",
            f"{_a(animal).capitalize()} has {answer} legs.",
        )
    else:
        count = rng.randint(2, 9)
        unit, per, whole = rng.choice([("days", 7, "weeks"), ("minutes", 60, "hours"), ("hours", 24, "days")])
        question, answer = f"How many {unit} are in {count} {whole}?", count * per
        sentence = f"There are {answer} {unit} in {count} {whole}."
    wrong = answer + rng.choice([-3, -2, -1, 1, 2, 3, 10])
    rejected, kind_of_reject = _reject(rng, str(wrong), sentence)
    return _place(rng, question, rng.choice(NUMBER_FORMATS)), str(answer), rejected, kind_of_reject


# -- one-word facts, asked in one of several formats -------------------------------------------------


def fact_question(rng: random.Random) -> Pair:
    family = rng.randrange(8)
    if family == 0:
        word, answer = rng.choice(OPPOSITES)
        question, sentence, pool = (
            f"What is the opposite of '{word}'?",
            f"The opposite of {word} is {answer}.",
            [o for _, o in OPPOSITES],
        )
    elif family == 1:
        animal, answer = rng.choice(SOUNDS)
        question, sentence, pool = (
            f"What sound does a {animal} make?",
            f"A {animal} makes the sound {answer}.",
            [s for _, s in SOUNDS],
        )
    elif family == 2:
        thing, answer = rng.choice(COLORS_OF)
        question, sentence, pool = (
            f"What color is {thing}?",
            f"The color of {thing} is {answer}.",
            CATEGORIES["colors"],
        )
    elif family == 3:
        word, answer = rng.choice(PLURALS)
        naive = word + "s"  # the regular-plural mistake, when it is a mistake for this word
        pool = [naive] if naive != answer else [p for _, p in PLURALS]
        question, sentence = f"What is the plural of '{word}'?", f"The plural of {word} is {answer}."
    elif family == 4:
        country, answer = rng.choice(CAPITALS)
        question, sentence, pool = (
            f"What is the capital of {country}?",
            f"The capital of {country} is {answer}.",
            [c for _, c in CAPITALS],
        )
    elif family == 5:
        index, step = rng.randrange(7), rng.choice(["after", "before"])
        answer = DAYS[(index + (1 if step == "after" else -1)) % 7]
        question, sentence, pool = (
            f"What day comes {step} {DAYS[index]}?",
            f"The day {step} {DAYS[index]} is {answer}.",
            DAYS,
        )
    elif family == 6:
        index = rng.randrange(12)
        answer = MONTHS[(index + 1) % 12]
        question, sentence, pool = (
            f"What month comes after {MONTHS[index]}?",
            f"The month after {MONTHS[index]} is {answer}.",
            MONTHS,
        )
    else:
        n = rng.randint(1, 999)
        answer = "even" if n % 2 == 0 else "odd"
        question, sentence, pool = f"Is {n} even or odd?", f"{n} is an {answer} number.", ["even", "odd"]
    wrong = rng.choice([item for item in pool if item.lower() != answer.lower()])
    style = rng.randrange(4)
    if style == 0:
        instruction, chosen, ignored, wrong = (
            "Answer with one word.",
            answer.capitalize(),
            sentence,
            wrong.capitalize(),
        )
    elif style == 1:
        instruction, chosen, ignored, wrong = (
            "Reply in all caps.",
            answer.upper(),
            answer.capitalize(),
            wrong.upper(),
        )
    elif style == 2:
        instruction, chosen, ignored, wrong = (
            "Answer in lowercase letters only.",
            answer.lower(),
            answer.upper(),
            wrong.lower(),
        )
    else:
        instruction, chosen, ignored = "Answer in one full sentence ending with a period.", sentence, answer
        wrong = sentence.replace(answer, wrong)
    rejected, kind = _reject(rng, wrong, ignored)
    return _place(rng, question, instruction), chosen, rejected, kind


# -- following a stated output format ----------------------------------------------------------------


def format_task(rng: random.Random) -> Pair:
    task = rng.randrange(8)
    if task == 0:
        word = rng.choice(WORDS)
        prompt, chosen = f"Write the word '{word}' in capital letters.", word.upper()
        rejected, kind = _reject(rng, rng.choice(WORDS).upper(), word)
    elif task == 1:
        word, times = rng.choice(WORDS), rng.randint(2, 5)
        prompt, chosen = (
            f"Repeat the word '{word}' {times} times, separated by spaces.",
            " ".join([word] * times),
        )
        rejected, kind = _reject(
            rng, " ".join([word] * (times + rng.choice([-1, 1]))), ", ".join([word] * times)
        )
    elif task == 2:
        start = rng.randint(1, 40)
        end = start + rng.randint(2, 4)
        numbers = [str(n) for n in range(start, end + 1)]
        prompt, chosen = f"Count from {start} to {end}, separated by commas.", ", ".join(numbers)
        skipped = numbers[:]
        del skipped[rng.randrange(1, len(skipped) - 1)]
        rejected, kind = _reject(rng, ", ".join(skipped), " ".join(numbers))
    elif task == 3:
        category, other = rng.sample(sorted(CATEGORIES), 2)
        count = rng.randint(2, 4)
        prompt = f"List {count} {category}, separated by commas."
        chosen = ", ".join(rng.sample(CATEGORIES[category], count))
        rejected, kind = _reject(
            rng, ", ".join(rng.sample(CATEGORIES[other], count)), chosen.replace(", ", " and ")
        )
    elif task == 4:
        name = rng.choice(NAMES)
        prompt, chosen = f"Say hello to {name}. Reply in all caps.", f"HELLO, {name.upper()}!"
        rejected, kind = _reject(
            rng, f"HELLO, {rng.choice([n for n in NAMES if n != name]).upper()}!", f"Hello, {name}!"
        )
    elif task == 5:
        category, other = rng.sample(sorted(CATEGORIES), 2)
        items = rng.sample(CATEGORIES[category], 3) + [rng.choice(CATEGORIES[other])]
        odd = items[-1]
        rng.shuffle(items)
        prompt = f"Which word does not belong: {', '.join(items)}? Answer with one word."
        chosen = odd.capitalize()
        wrong = rng.choice([item for item in items if item != odd]).capitalize()
        rejected, kind = _reject(rng, wrong, f"The odd one out is {odd}.")
    elif task == 6:
        numbers = rng.sample(range(1, 100), rng.randint(3, 4))
        ordered = ", ".join(str(n) for n in sorted(numbers))
        prompt = f"Sort from smallest to largest: {', '.join(str(n) for n in numbers)}. Numbers only."
        chosen = ordered
        rejected, kind = _reject(
            rng,
            ", ".join(str(n) for n in sorted(numbers, reverse=True)),
            f"Sorted: {ordered}.",
        )
    else:
        words = rng.sample(WORDS, 3)
        ordered = ", ".join(sorted(words))
        prompt = f"Put in alphabetical order: {', '.join(words)}. Words only, separated by commas."
        rejected, kind = _reject(rng, ", ".join(sorted(words, reverse=True)), f"In order: {ordered}.")
        chosen = ordered
    return prompt, chosen, rejected, kind


GENERATORS: list[tuple[str, Callable[[random.Random], Pair]]] = [
    ("numeric", numeric_question),
    ("fact", fact_question),
    ("format", format_task),
]
OPENERS = [
    ("Quick question.", "Sure, go ahead."),
    ("Can you help me with something?", "Of course. What is it?"),
    ("I am doing a short quiz.", "Great, ask away."),
]


def make_pairs(seed: int, count: int) -> list[dict]:
    """`count` pairs with distinct prompts, in a deterministic order for `seed`."""
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < count:
        task, generate = rng.choice(GENERATORS)
        question, chosen, rejected, kind = generate(rng)
        if question in seen or chosen == rejected:
            continue
        seen.add(question)
        prompt = [{"role": "user", "content": question}]
        # A few two-turn conversations (short questions only, to keep pairs short), so multi-turn
        # prompts are exercised.
        if len(question) < 45 and rng.random() < 0.1:
            opener, reply = rng.choice(OPENERS)
            prompt = [{"role": "user", "content": opener}, {"role": "assistant", "content": reply}, *prompt]
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "task": task,
                "rejected_kind": kind,
            }
        )
    return pairs


def render_files(seed: int) -> dict[str, str]:
    """File name -> JSON Lines text of the train and test splits."""
    pairs = make_pairs(seed, TRAIN_PAIRS + TEST_PAIRS)
    splits = {"demo_train.jsonl": pairs[:TRAIN_PAIRS], "demo_test.jsonl": pairs[TRAIN_PAIRS:]}
    return {
        name: "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        for name, rows in splits.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=DATA_DIR)
    parser.add_argument(
        "--check", action="store_true", help="compare with the files in --out-dir instead of writing"
    )
    args = parser.parse_args(argv)
    files = render_files(args.seed)
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out_dir / name).is_file()
            or (args.out_dir / name).read_text(encoding="utf-8") != text
        ]
        if stale:
            print(f"out of date: {', '.join(stale)}; run python scripts/make_demo_data.py", file=sys.stderr)
            return 1
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out_dir / name} ({text.count(chr(10))} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

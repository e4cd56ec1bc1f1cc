"""The IFEval instructions the synthetic prompts use: which go together, how each one's arguments are
drawn, and the several ways it is worded.

Each instruction id of `cookbook.eval.ifeval.instruction_registry()` has

- a draw of its checker's arguments (`DRAWS`; a prompt's all together in `draw_all`), from a seeded
  `random.Random`, in ranges a reply can meet (a 135M model asked for "at least 400 words" learns
  nothing from its samples);
- several wordings (`phrase`): the checker's own description, and ones written here that ask for
  exactly what the checker verifies (the `***` divider for paragraphs, `SECTION 1` markers, the exact
  end phrase). Varied wording is what keeps a policy from learning one sentence instead of the rule.

Instructions that cannot both be followed are never combined: the IFEval registry's conflicts table,
made symmetric, plus the pairs in `EXTRA_CONFLICTS` that it misses. Words an instruction requires
(keywords, a paragraph's first word, the end phrase) are never forbidden, or counted down, by another
instruction of the same prompt.
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable
from typing import Any

LESS, AT_LEAST = "less than", "at least"
# Content words for keyword instructions, distinct from every word of the end phrases and markers.
WORDS = (
    "anchor", "balance", "blanket", "candle", "canvas", "compass", "copper", "cotton", "crystal",
    "curtain", "feather", "garden", "harvest", "horizon", "journey", "lantern", "marble", "meadow",
    "mirror", "orchard", "paper", "pepper", "pocket", "puzzle", "ribbon", "saddle", "shadow", "signal",
    "silver", "spiral", "stone", "thunder", "ticket", "timber", "velvet", "violet", "whistle", "window",
    "winter", "yellow",
)
FIRST_WORDS = ("meanwhile", "today", "honestly", "first", "finally", "sometimes", "luckily", "overall",
               "imagine", "remember", "later", "besides", "indeed", "surprisingly", "yesterday")
END_PHRASES = ("Is there anything else I can help with?", "Any other questions?", "Let me know if you need more.",
               "That is all for now.", "Thanks for reading.", "Hope this helps!")
RARE_LETTERS = "jqxz"
COMMON_LETTERS = "aeinorstlcdu"
# Pairs the registry's table allows but a reply cannot (or can hardly) satisfy together.
EXTRA_CONFLICTS = {
    "change_case:english_lowercase": {"detectable_format:multiple_sections"},  # "Section 1" has a capital
    "language:response_language": {"keywords:letter_frequency", "change_case:capital_word_frequency",
                                   "length_constraints:nth_paragraph_first_word"},  # English letters / words
    "length_constraints:number_words": {"length_constraints:number_sentences"},  # two length budgets
    "length_constraints:nth_paragraph_first_word": {"detectable_format:multiple_sections"},
    "combination:repeat_prompt": {"punctuation:no_comma"},  # the repeated request may hold commas
}


@functools.cache
def conflict_table() -> dict[str, frozenset[str]]:
    """Instruction id -> the ids it cannot be combined with (itself included); symmetric."""
    from if_verifiable.ifeval import instructions_registry

    table = copy.deepcopy(instructions_registry.INSTRUCTION_CONFLICTS)
    for instruction_id, others in EXTRA_CONFLICTS.items():
        table.setdefault(instruction_id, set()).update(others)
    for others in list(table.values()):
        for other in others:
            table.setdefault(other, set())
    symmetric = instructions_registry.conflict_make(table)
    return {instruction_id: frozenset(others) for instruction_id, others in symmetric.items()}


# -- drawing arguments -------------------------------------------------------------------------------


class Context:
    """What a draw may depend on: the prompt's instruction ids and the words already put in play."""

    def __init__(self, ids: list[str], required: list[str]) -> None:
        self.ids = ids
        self.text = " ".join(required).lower()
        self.free_words = [word for word in WORDS if word not in self.text]


def _relation(rng: random.Random, less: tuple[int, int], at_least: tuple[int, int]) -> tuple[str, int]:
    relation = rng.choice((LESS, AT_LEAST))
    return relation, rng.randint(*(less if relation == LESS else at_least))


def _letter(rng: random.Random, c: Context) -> dict[str, Any]:
    relation = rng.choice((LESS, AT_LEAST))
    if relation == LESS:  # a rare letter, and none that a required word holds
        letter = rng.choice([letter for letter in RARE_LETTERS if letter not in c.text] or ["q"])
        return {"letter": letter, "let_frequency": rng.randint(2, 6), "let_relation": relation}
    return {"letter": rng.choice(COMMON_LETTERS), "let_frequency": rng.randint(3, 12), "let_relation": relation}


def _keyword_frequency(rng: random.Random, c: Context) -> dict[str, Any]:
    relation, count = _relation(rng, (2, 4), (2, 4))
    return {"keyword": rng.choice(c.free_words), "frequency": count, "relation": relation}


def _sentences(rng: random.Random, c: Context) -> dict[str, Any]:
    relation, count = _relation(rng, (4, 12), (2, 8))
    return {"num_sentences": count, "relation": relation}


def _words(rng: random.Random, c: Context) -> dict[str, Any]:
    relation = rng.choice((LESS, AT_LEAST))
    count = rng.randrange(60, 260, 10) if relation == LESS else rng.randrange(30, 210, 10)
    return {"num_words": count, "relation": relation}


def _nth_paragraph(rng: random.Random, c: Context) -> dict[str, Any]:
    paragraphs = rng.randint(2, 4)
    first_word = rng.choice([word for word in FIRST_WORDS if word not in c.text])
    return {"num_paragraphs": paragraphs, "nth_paragraph": rng.randint(1, paragraphs), "first_word": first_word}


def _capital_words(rng: random.Random, c: Context) -> dict[str, Any]:
    relation, count = _relation(rng, (3, 10), (2, 8))
    return {"capital_frequency": count, "capital_relation": relation}


def _language(rng: random.Random, c: Context) -> dict[str, Any]:
    from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

    return {"language": rng.choice(sorted(code for code in LANGUAGE_CODES if code != "en"))}


def _sections(rng: random.Random, c: Context) -> dict[str, Any]:
    # An all-capital reply needs the all-capital marker; otherwise either.
    splitter = "SECTION" if "change_case:english_capital" in c.ids else rng.choice(("Section", "SECTION"))
    return {"section_spliter": splitter, "num_sections": rng.randint(2, 5)}


Draw = Callable[[random.Random, Context], dict[str, Any]]
# The checkers without arguments are absent (they get {}), and so is repeat_prompt, whose request is
# known only once the prompt is written.
DRAWS: dict[str, Draw] = {
    "keywords:existence": lambda rng, c: {"keywords": sorted(rng.sample(c.free_words, rng.randint(1, 2)))},
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": lambda rng, c: {"forbidden_words": sorted(rng.sample(c.free_words, rng.randint(1, 3)))},
    "keywords:letter_frequency": _letter,
    "language:response_language": _language,
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_paragraphs": lambda rng, c: {"num_paragraphs": rng.randint(2, 5)},
    "length_constraints:number_words": _words,
    "length_constraints:nth_paragraph_first_word": _nth_paragraph,
    "detectable_content:number_placeholders": lambda rng, c: {"num_placeholders": rng.randint(1, 4)},
    "detectable_content:postscript": lambda rng, c: {"postscript_marker": rng.choice(("P.S.", "P.P.S"))},
    "detectable_format:number_bullet_lists": lambda rng, c: {"num_bullets": rng.randint(2, 6)},
    "detectable_format:number_highlighted_sections": lambda rng, c: {"num_highlights": rng.randint(1, 4)},
    "detectable_format:multiple_sections": _sections,
    "startend:end_checker": lambda rng, c: {"end_phrase": rng.choice(END_PHRASES)},
    "change_case:capital_word_frequency": _capital_words,
}
# The arguments that put words in play, drawn first (in this order) so that later draws avoid them:
# no required word is forbidden or counted down by another instruction of the same prompt.
WORDS_IN_PLAY = {
    "startend:end_checker": "end_phrase",
    "detectable_content:postscript": "postscript_marker",
    "detectable_format:multiple_sections": "section_spliter",
    "length_constraints:nth_paragraph_first_word": "first_word",
    "keywords:existence": "keywords",
    "keywords:frequency": "keyword",
}


def draw_all(rng: random.Random, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each instruction's checker arguments (not yet `prompt_to_repeat`), consistent with each other."""
    order = list(WORDS_IN_PLAY)
    ordered = sorted(ids, key=lambda i: (order.index(i) if i in order else len(order), i))
    required: list[str] = []
    arguments = {}
    for instruction_id in ordered:
        draw = DRAWS.get(instruction_id)
        arguments[instruction_id] = draw(rng, Context(ids, required)) if draw else {}
        if instruction_id in WORDS_IN_PLAY:
            value = arguments[instruction_id][WORDS_IN_PLAY[instruction_id]]
            required.extend(value if isinstance(value, list) else [value])
    return arguments


# -- wording ----------------------------------------------------------------------------------------


def _quoted(words: list[str]) -> str:
    quoted = [f"'{word}'" for word in words]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def _times(count: int) -> str:
    return {1: "once", 2: "twice"}.get(count, f"{count} times")


def _ordinal(n: int) -> str:
    return ("first", "second", "third", "fourth", "fifth")[n - 1]


def _sentence_end(text: str) -> str:
    return text if text.endswith(".") else text + "."


def _language_name(code: str) -> str:
    from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

    return LANGUAGE_CODES[code]


Phrasing = Callable[[dict[str, Any]], str]
# Our own wordings of each instruction, besides the checker's description. `a` is the checker's
# arguments; `a["_where"]` says where the request to repeat is ("above" or "below").
PHRASINGS: dict[str, tuple[Phrasing, ...]] = {
    "keywords:existence": (
        lambda a: f"Make sure your answer uses the word{'s' * (len(a['keywords']) > 1)} {_quoted(a['keywords'])}.",
        lambda a: f"Work {_quoted(a['keywords'])} into your reply somewhere.",
        lambda a: f"Your response must mention {_quoted(a['keywords'])}.",
    ),
    "keywords:frequency": (
        lambda a: (f"Use the word '{a['keyword']}' at least {_times(a['frequency'])}." if a["relation"] == AT_LEAST
                   else f"Use the word '{a['keyword']}' fewer than {a['frequency']} times."),
        lambda a: (f"The word '{a['keyword']}' has to show up {a['frequency']} or more times in your answer."
                   if a["relation"] == AT_LEAST
                   else f"Do not write the word '{a['keyword']}' more than {_times(a['frequency'] - 1)}."),
    ),
    "keywords:forbidden_words": (
        lambda a: f"Avoid the word{'s' * (len(a['forbidden_words']) > 1)} {_quoted(a['forbidden_words'])} entirely.",
        lambda a: f"Never use {_quoted(a['forbidden_words'])} anywhere in your answer.",
        lambda a: f"Do not write any of these words: {', '.join(a['forbidden_words'])}.",
    ),
    "keywords:letter_frequency": (
        lambda a: (f"The letter '{a['letter']}' must appear at least {a['let_frequency']} times in your reply."
                   if a["let_relation"] == AT_LEAST
                   else f"Keep the letter '{a['letter']}' to fewer than {a['let_frequency']} appearances."),
        lambda a: (f"Use the letter {a['letter']} {a['let_frequency']} or more times." if a["let_relation"] == AT_LEAST
                   else f"The letter {a['letter']} may appear at most {_times(a['let_frequency'] - 1)} "
                        "in your whole answer."),
    ),
    "language:response_language": (
        lambda a: f"Reply only in {_language_name(a['language'])}.",
        lambda a: f"Write your whole answer in {_language_name(a['language'])}; do not use any other language.",
    ),
    "length_constraints:number_sentences": (
        lambda a: (f"Write at least {a['num_sentences']} sentences." if a["relation"] == AT_LEAST
                   else f"Use fewer than {a['num_sentences']} sentences."),
        lambda a: (f"Your answer needs {a['num_sentences']} or more sentences." if a["relation"] == AT_LEAST
                   else f"Keep it under {a['num_sentences']} sentences."),
    ),
    "length_constraints:number_paragraphs": (
        lambda a: f"Write exactly {a['num_paragraphs']} paragraphs and put the markdown divider *** between them.",
        lambda a: f"Split your answer into {a['num_paragraphs']} paragraphs, separated from each other by ***.",
    ),
    "length_constraints:number_words": (
        lambda a: (f"Your reply should be at least {a['num_words']} words long." if a["relation"] == AT_LEAST
                   else f"Keep your answer under {a['num_words']} words."),
        lambda a: (f"Write no fewer than {a['num_words']} words." if a["relation"] == AT_LEAST
                   else f"Use fewer than {a['num_words']} words in total."),
    ),
    "length_constraints:nth_paragraph_first_word": (
        lambda a: f"Write {a['num_paragraphs']} paragraphs separated by blank lines, and begin the "
                  f"{_ordinal(a['nth_paragraph'])} paragraph with the word '{a['first_word']}'.",
        lambda a: f"Your answer should have exactly {a['num_paragraphs']} paragraphs with an empty line between "
                  f"them; the {_ordinal(a['nth_paragraph'])} one has to start with \"{a['first_word']}\".",
    ),
    "detectable_content:number_placeholders": (
        lambda a: f"Include at least {a['num_placeholders']} placeholder{'s' * (a['num_placeholders'] > 1)} in "
                  "square brackets, like [name].",
        lambda a: f"Leave at least {a['num_placeholders']} blank{'s' * (a['num_placeholders'] > 1)} for the reader "
                  "to fill in, written in square brackets such as [date].",
    ),
    "detectable_content:postscript": (
        lambda a: f"End with a postscript that begins with {_sentence_end(a['postscript_marker'])}",
        lambda a: f"After the main answer, add a short note starting with {_sentence_end(a['postscript_marker'])}",
    ),
    "detectable_format:number_bullet_lists": (
        lambda a: f"Include exactly {a['num_bullets']} bullet points, each on its own line starting with '* '.",
        lambda a: f"Use a markdown list of exactly {a['num_bullets']} items, each starting with an asterisk.",
    ),
    "detectable_format:constrained_response": (
        lambda a: "Respond with one of these three sentences: My answer is yes. / My answer is no. / "
                  "My answer is maybe.",
        lambda a: 'Your answer must be "My answer is yes.", "My answer is no." or "My answer is maybe."',
    ),
    "detectable_format:number_highlighted_sections": (
        lambda a: f"Mark at least {a['num_highlights']} key phrase{'s' * (a['num_highlights'] > 1)} with single "
                  "asterisks, like *this*.",
        lambda a: f"Emphasise at least {a['num_highlights']} part{'s' * (a['num_highlights'] > 1)} of your answer by "
                  "wrapping them in asterisks, e.g. *important point*.",
    ),
    "detectable_format:multiple_sections": (
        lambda a: f"Organise your answer into {a['num_sections']} sections, each opening with a line like "
                  f"'{a['section_spliter']} 1', '{a['section_spliter']} 2' and so on.",
        lambda a: f"Divide the response into {a['num_sections']} parts labelled {a['section_spliter']} 1 to "
                  f"{a['section_spliter']} {a['num_sections']}.",
    ),
    "detectable_format:json_format": (
        lambda a: "Give your whole answer as valid JSON and nothing else.",
        lambda a: "Format the complete reply as a JSON object (a ```json code block is fine).",
    ),
    "detectable_format:title": (
        lambda a: "Give your answer a title inside double angle brackets, for example <<a rainy day>>.",
        lambda a: "Include a title written between << and >>.",
    ),
    "combination:two_responses": (
        lambda a: "Write two different answers and separate them with six asterisks (******).",
        lambda a: "Give two distinct versions, with exactly six asterisks ****** between them and nowhere else.",
    ),
    "combination:repeat_prompt": (
        lambda a: f"Before answering, copy the request {a['_where']} exactly as written (leaving out this "
                  "sentence), then respond to it.",
        lambda a: f"Begin your reply by restating the request {a['_where']} word for word, without this sentence, "
                  "and only then answer it.",
    ),
    "startend:end_checker": (
        lambda a: f'End your reply with the exact words "{a["end_phrase"]}" and write nothing after them.',
        lambda a: f"The very last words of your answer must be: {a['end_phrase']}",
    ),
    "change_case:capital_word_frequency": (
        lambda a: (f"Use at least {a['capital_frequency']} words written entirely in capital letters."
                   if a["capital_relation"] == AT_LEAST
                   else f"Use fewer than {a['capital_frequency']} words written entirely in capital letters."),
        lambda a: (f"Put at least {a['capital_frequency']} words in ALL CAPS for emphasis."
                   if a["capital_relation"] == AT_LEAST
                   else f"Write at most {a['capital_frequency'] - 1} fully capitalised words."),
    ),
    "change_case:english_capital": (
        lambda a: "Write your whole reply in English using only uppercase letters.",
        lambda a: "Answer in English, in capital letters only.",
    ),
    "change_case:english_lowercase": (
        lambda a: "Reply in English and use only lowercase letters, with no capitals at all.",
        lambda a: "Write everything in english in lowercase, without a single capital letter.",
    ),
    "punctuation:no_comma": (
        lambda a: "Do not use a single comma in your answer.",
        lambda a: "Write your reply without any commas.",
    ),
    "startend:quotation": (
        lambda a: "Put your whole answer inside double quotes.",
        lambda a: "Enclose the entire reply in a pair of double quotation marks.",
    ),
}


def phrase(instruction_id: str, arguments: dict[str, Any], rng: random.Random, where: str = "above") -> str:
    """One wording of the instruction: the checker's own description or one of ours, drawn by `rng`."""
    choice = rng.randrange(len(PHRASINGS[instruction_id]) + 1)
    if choice < len(PHRASINGS[instruction_id]):
        return PHRASINGS[instruction_id][choice]({**arguments, "_where": where})
    from cookbook.eval.ifeval import instruction_registry

    return instruction_registry()[instruction_id](instruction_id).build_description(**arguments)

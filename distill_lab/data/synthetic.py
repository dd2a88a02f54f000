"""A small, seeded synthetic English NER corpus (PER/ORG/LOC/MISC, IOB2) needing no download.

It is meant for smoke tests and quick sweeps: learnable, but not solvable by memorising
surface forms, because

* many names are ambiguous and only the context decides the type ("Jordan said ..." is PER,
  "flew to Jordan" is LOC, "Houston beat Chelsea 2-1" is ORG, "Ford reported a profit" is ORG);
* tokens are shared across types ("New" in New York / New York Times / New Year);
* sentences often start with a capitalised non-entity word, and months/days are O.
"""

from __future__ import annotations

import hashlib
import random

from distill_lab.data.corpus import Sentence
from distill_lab.errors import DataError

MIN_LEN, MAX_LEN = 5, 25

# Names usable as given names *and* as places or organisations elsewhere in the lexicons.
_AMBIGUOUS_FIRST = ("Jordan", "Paris", "Georgia", "Florence", "Victoria", "Austin", "Sydney",
                    "Madison", "Chelsea", "June")
_FIRST = ("John", "Mary", "David", "Sarah", "Michael", "Anna", "Peter", "Laura", "James",
          "Elena", "Carlos", "Yuki", "Ahmed", "Olga", "Thomas", "Maria", "Kwame", "Ingrid",
          "Rahul", "Sofia") + _AMBIGUOUS_FIRST
_AMBIGUOUS_LAST = ("Washington", "Ford", "Morgan", "Lincoln", "Jackson", "Houston", "Jordan")
_LAST = ("Smith", "Garcia", "Chen", "Okafor", "Novak", "Kowalski", "Rossi", "Tanaka",
         "Brown", "Miller", "Wilson", "Taylor", "Anderson", "Clark", "Lewis", "Walker",
         "Nakamura", "Schmidt", "Dubois", "Haddad") + _AMBIGUOUS_LAST

_LOC = ("Germany", "France", "Japan", "Brazil", "Kenya", "Canada", "India", "Egypt", "Peru",
        "Norway", "London", "Berlin", "Tokyo", "Madrid", "Cairo", "Lima", "Oslo", "Toronto",
        "Mumbai", "New York", "Los Angeles", "South Africa", "Rio de Janeiro", "Hong Kong",
        "New Zealand", "United States", "Buenos Aires", "Sri Lanka",
        # ambiguous with PER / ORG
        "Jordan", "Washington", "Paris", "Georgia", "Florence", "Victoria", "Austin",
        "Lincoln", "Sydney", "Madison", "Jackson", "Houston", "Chelsea", "Amazon")

_ORG = ("Reuters", "Siemens", "Toyota", "Nokia", "Samsung", "General Electric", "World Bank",
        "United Nations", "European Union", "Red Cross", "Bank of England", "New York Times",
        "Washington Post", "Morgan Stanley", "Ford Motor", "American Airlines",
        "Paris Saint-Germain", "Manchester United", "Real Madrid", "Georgia Tech",
        "Houston Rockets", "Lincoln Electric", "Jackson National", "Sydney Morning Herald",
        # ambiguous with PER / LOC ("Jordan", "Washington" as clubs are only in _TEAMS,
        # because outside a sports context "a spokesman for Jordan" really is the country)
        "Ford", "Amazon", "Chelsea")

# Teams: the subset of ORG used in sports contexts, where a city name means the club.
_TEAMS = ("Chelsea", "Manchester United", "Real Madrid", "Paris Saint-Germain", "Houston",
          "Washington", "Jordan", "Houston Rockets", "Georgia Tech")

_NATIONALITY = ("German", "French", "Japanese", "Brazilian", "Kenyan", "Canadian", "Indian",
                "American", "British", "Chinese", "Italian", "Egyptian", "Norwegian")
_EVENT = ("World Cup", "Olympic Games", "Tour de France", "Nobel Prize", "Paris Open",
          "Houston Marathon", "New Year", "Euro 2024", "Davis Cup", "Washington Accord")
_LANGUAGE = ("English", "Spanish", "Arabic", "French", "German", "Japanese", "Swahili")

_DAY = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH = ("January", "March", "April", "May", "June", "July", "September", "November")
_TITLE = ("Mr.", "Ms.", "Dr.", "President", "Minister", "coach", "striker", "analyst")
_OPENERS = ("Meanwhile ,", "However ,", "Earlier ,", "Officials said", "On {DAY} ,",
            "In {MONTH} ,")

# Slot -> entity type of the mention it produces; slots not listed here are plain O words.
_SLOT_TYPES = {"PER": "PER", "LOC": "LOC", "ORG": "ORG", "TEAM": "ORG", "NAT": "MISC",
               "EVENT": "MISC", "LANG": "MISC"}

# Each template is one sentence; the wording around a slot is what identifies its type.
_TEMPLATES = (
    # PER contexts
    "{PER} said on {DAY} that the talks had gone well .",
    "{PER} , who joined {ORG} in {YEAR} , will step down next month .",
    "According to {PER} , the deal with {ORG} is worth {NUM} million dollars .",
    "{TITLE} {PER} told reporters in {LOC} that the plan would go ahead .",
    "{PER} scored twice as {TEAM} beat {TEAM} {SCORE} on {DAY} .",
    "{PER} , who holds {NAT} citizenship , was born in {LOC} in {YEAR} .",
    "Police in {LOC} arrested {PER} on {DAY} .",
    "{PER} won the {EVENT} after a long final against {PER} .",
    "Shares of {ORG} rose {NUM} percent after {PER} was named chief executive .",
    "{TEAM} hired {PER} as their new coach .",
    "In an interview , {PER} criticised the {NAT} government .",
    "{PER} flew to {LOC} to meet {PER} .",
    "The {NAT} striker {PER} signed for {TEAM} in {MONTH} .",
    "She told {PER} that she would not run again .",
    "{PER} declined to comment .",
    "{PER} , {NUM} , has written {NUM} books in {LANG} .",
    # LOC contexts
    "Heavy rain hit {LOC} on {DAY} , officials said .",
    "She flew to {LOC} last week .",
    "The summit will be held in {LOC} in {MONTH} .",
    "Temperatures in {LOC} and {LOC} fell below zero on {DAY} .",
    "Exports from {LOC} to {LOC} grew {NUM} percent in {MONTH} .",
    "Thousands of tourists visit {LOC} every summer .",
    "{ORG} opened a new factory near {LOC} .",
    "The road from {LOC} to {LOC} was closed after the storm .",
    "Troops crossed the border into {LOC} early on {DAY} .",
    "He was born in {LOC} and moved to {LOC} as a child .",
    # ORG contexts
    "{ORG} reported a net profit of {NUM} million dollars on {DAY} .",
    "A spokesman for {ORG} declined to comment .",
    "{ORG} agreed to buy {ORG} for {NUM} million dollars .",
    "{ORG} said it would cut {NUM} jobs in {LOC} .",
    "Fans of {TEAM} celebrated the title in {LOC} .",
    "The board of {ORG} met in {LOC} on {DAY} .",
    "{TEAM} drew {SCORE} with {TEAM} on {DAY} .",
    "Analysts expect {ORG} shares to fall after the {MONTH} results .",
    "{ORG} shares fell sharply .",
    # MISC contexts
    "The {NAT} team arrived in {LOC} on {DAY} .",
    "Tickets for the {EVENT} sold out within hours .",
    "The {NAT} prime minister visited {LOC} on {DAY} .",
    "Organisers of the {EVENT} in {LOC} expect {NUM} visitors .",
    "He speaks fluent {LANG} and some {LANG} .",
    "{NAT} and {NAT} officials signed the agreement in {LOC} .",
    "Yesterday the {NAT} delegation left the {EVENT} talks early .",
)


def _person(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.45:
        return f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
    if r < 0.70:
        return rng.choice(_LAST)
    if r < 0.85:
        return rng.choice(_FIRST)
    return f"{rng.choice(_FIRST)} {rng.choice('ABCDEFGHJKLMRST')}. {rng.choice(_LAST)}"


def _fill(slot: str, rng: random.Random) -> str:
    """Surface text for one slot (entity mention or O filler)."""
    choices = {
        "LOC": _LOC, "ORG": _ORG, "TEAM": _TEAMS, "NAT": _NATIONALITY, "EVENT": _EVENT,
        "LANG": _LANGUAGE, "DAY": _DAY, "MONTH": _MONTH, "TITLE": _TITLE,
    }
    if slot == "PER":
        return _person(rng)
    if slot in choices:
        return rng.choice(choices[slot])
    if slot == "NUM":
        return str(rng.randint(2, 950))
    if slot == "YEAR":
        return str(rng.randint(1950, 2024))
    if slot == "SCORE":
        return f"{rng.randint(0, 5)}-{rng.randint(0, 5)}"
    raise AssertionError(f"unknown template slot {slot!r}")  # a bug in _TEMPLATES


def _render(template: str, rng: random.Random) -> Sentence:
    tokens: list[str] = []
    tags: list[str] = []
    for piece in template.split():
        if not (piece.startswith("{") and piece.endswith("}")):
            tokens.append(piece)
            tags.append("O")
            continue
        slot = piece[1:-1]
        words = _fill(slot, rng).split()
        etype = _SLOT_TYPES.get(slot)
        tokens += words
        if etype is None:
            tags += ["O"] * len(words)
        else:
            tags += [f"B-{etype}"] + [f"I-{etype}"] * (len(words) - 1)
    # Sentence-initial "coach Smith ..." -> "Coach Smith ...": capitalisation alone must not
    # tell the model where entities are.
    tokens[0] = tokens[0][:1].upper() + tokens[0][1:]
    return Sentence(tuple(tokens), tuple(tags))


def _lower_first(template: str) -> str:
    """Lower-case the first word (unless it is a slot) so the template can follow other words."""
    first, _, rest = template.partition(" ")
    return f"{first if first.startswith('{') else first.lower()} {rest}"


def _sentence(rng: random.Random) -> Sentence:
    while True:  # resample the renderings that fall outside the length bounds
        template = rng.choice(_TEMPLATES)
        if rng.random() < 0.15:
            # Two clauses in one sentence: longer sentences and entities far from the start.
            template = f"{template[:-2]} , while {_lower_first(rng.choice(_TEMPLATES))}"
        if rng.random() < 0.2:
            # A capitalised O word now starts the sentence instead of the template's own.
            template = f"{rng.choice(_OPENERS)} {_lower_first(template)}"
        sentence = _render(template, rng)
        if MIN_LEN <= len(sentence.tokens) <= MAX_LEN:
            return sentence


def _stream(seed: int, split: str) -> random.Random:
    # Independent stream per split (derived by hashing, not hash()), so changing n_train
    # leaves dev/test unchanged and the output is identical across processes.
    digest = hashlib.sha256(f"distill_lab.synthetic:{seed}:{split}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def generate_corpus(
    n_train: int = 600, n_dev: int = 200, n_test: int = 200, seed: int = 0
) -> dict[str, list[Sentence]]:
    """Generate ``{"train", "dev", "test"}`` synthetic NER splits; deterministic in ``seed``."""
    sizes = {"train": n_train, "dev": n_dev, "test": n_test}
    for split, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise DataError(f"synthetic corpus: n_{split} must be an integer >= 0, got {n!r}")
    out: dict[str, list[Sentence]] = {}
    for split, n in sizes.items():
        rng = _stream(seed, split)
        out[split] = [_sentence(rng) for _ in range(n)]
    return out

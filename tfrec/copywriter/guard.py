"""Grounded, or not published: the rules a generated pitch must pass, and the template used otherwise.

A pitch is published only when every rule holds:

- ``names_product``: it names the product (a word of its title);
- ``invented_fact``: it holds no number, size, price, brand, URL, material or colour absent
  from its inputs (the title, and the title of the product bought before when personalised);
- ``repeated_ngram``: no sequence of ``REPEAT_N`` words occurs twice, counting a hyphenated
  word as one word and as its parts ("tea light, a tea-light, a tea light" fails), and no word
  of ``MIN_STUTTER_LETTERS`` letters or more comes back within ``STUTTER_WINDOW`` words
  ("stylish and stylish", "vegan vegan");
- ``echo``: it does not repeat the prompt's instructions, and says at least ``MIN_NEW_WORDS``
  words beyond the title's (a bare title is no pitch);
- ``length``: one or two sentences, ``MIN_WORDS`` to ``MAX_WORDS`` words;
- ``unfinished``: it ends a sentence (a pitch cut by the length limit does not).

Of the N samples for a product, the passing one closest to the product's title (by a
score, e.g. the MiniLM similarity) is published; when none passes, a template sentence is,
and the verdict records which rules the samples failed.

Example:

>>> violations("A bright red mug for morning coffee.", "RED MUG")
[]
>>> violations("A 12 oz mug by Acme, only $5 at www.acme.com.", "RED MUG")
['invented_fact']
>>> template("RED RETROSPOT MUG")
'Red Retrospot Mug, picked for you.'
"""

from __future__ import annotations

import dataclasses
import html
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

RULES = ("names_product", "invented_fact", "repeated_ngram", "echo", "length", "unfinished")
RULES_VERSION = 7
"""Changes whenever a rule does: cached answers judged by other rules are not reused."""
MIN_NEW_WORDS = 3
MAX_WORDS, MIN_WORDS, MAX_SENTENCES = 40, 4, 2
REPEAT_N = 3
STUTTER_WINDOW, MIN_STUTTER_LETTERS = 3, 4
ECHO_N = 4
"""A pitch sharing a run of this many words with the prompt's own text (title aside) echoes it."""

WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
PART = re.compile(r"[^\W_]+")
"""A word's parts: a hyphenated or possessive word split where its hyphens and apostrophes are."""
SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
URL = re.compile(r"https?://|www\.|\b[\w-]+\.(?:com|net|org|co|uk|io|shop|store)\b|@\w", re.I)
CURRENCY = re.compile(r"[$£€¥₹]")
MARKS = re.compile(r"[™®©]")
NUMBER_WORDS = frozenset(
    "one two three four five six seven eight nine ten eleven twelve twenty thirty fifty hundred thousand "
    "dozen half quarter single double triple pair".split())
"""Counting words: a count is a fact, so one absent from the inputs is invented ("a pair of" included)."""
UNIT_WORDS = frozenset(
    "cm mm m km inch inches ft feet foot yard yards metre metres meter meters litre litres liter liters "
    "ml oz ounce ounces lb lbs pound pounds kg g gram grams grams xs xl xxl size sizes dollar dollars cent "
    "cents euro euros pence price prices priced cost costs discount sale".split())
"""Sizes and prices said in words. Not "in": as a unit it follows a number, which is a fact on its own
("12 in"), and as the preposition it is none ("a glow in any room")."""
MATERIAL_WORDS = frozenset(
    "glass wood wooden metal steel iron brass copper tin aluminium aluminum silver gold golden ceramic porcelain "
    "china stoneware pottery clay stone marble granite crystal plastic acrylic resin rubber paper cardboard "
    "cotton linen wool woollen wooly silk satin velvet lace leather suede felt polyester nylon denim bamboo "
    "wicker rattan cork enamel vinyl".split())
"""Materials: a pitch's material that the title does not name is invented ("hand-blown glass")."""
COLOUR_WORDS = frozenset(
    "red blue green yellow orange purple pink white black grey gray brown beige cream ivory turquoise teal "
    "navy lilac violet".split())
"""Colours: one the title does not name is invented."""
PLAIN_CAPITALS = frozenset("i christmas easter valentine valentine's halloween english ok".split())
"""Capitalised words that name no brand."""
STOPWORDS = frozenset("a an and the of for with in on to set s by at or from".split())


def words(text: str) -> list[str]:
    return WORD.findall(text)


def _fold(word: str) -> str:
    word = word.lower().replace("’", "'")
    return word[:-2] if word.endswith("'s") else word[:-1] if len(word) > 3 and word.endswith("s") else word


def plain(text: str) -> str:
    """A catalogue text without HTML escapes (``&amp;`` is ``&``, ``&nbsp;`` a space), spaces squeezed."""
    return " ".join(html.unescape(text).split())


def display_title(title: str) -> str:
    """A title as a person writes it: ``plain``, and an all-capitals title in capitalised words.

    >>> display_title("Melissa &amp; Doug Easel"), display_title("RED  MUG")
    ('Melissa & Doug Easel', 'Red Mug')
    """
    title = plain(title)
    return string.capwords(title) if title.upper() == title else title


def _title_words(title: str) -> set[str]:
    return {_fold(w) for w in words(title) if len(w) >= 3 and w.lower() not in STOPWORDS and not w.isdigit()}


def _sentences(text: str) -> list[str]:
    return [part for part in SENTENCE_END.split(text) if part.strip()]


def invented(pitch: str, inputs: Sequence[str]) -> list[str]:
    """The facts in ``pitch`` that none of ``inputs`` holds: numbers, counting words, sizes and
    prices, materials, colours, currency signs, URLs, trademark signs and capitalised words
    (brands, places, names) not at the start of a sentence."""
    known = {_fold(w) for text in inputs for w in words(text)}
    known_digits = {d for text in inputs for d in re.findall(r"\d+", text)}
    found = [d for d in re.findall(r"\d+", pitch) if d not in known_digits]
    found += [m.group() for m in (*CURRENCY.finditer(pitch), *MARKS.finditer(pitch), *URL.finditer(pitch))
              if not any(m.group().lower() in text.lower() for text in inputs)]
    for sentence in _sentences(pitch):
        for position, word in enumerate(words(sentence)):
            folded = _fold(word)
            if folded in known or word.lower() in known:
                continue
            if word.lower() in NUMBER_WORDS | UNIT_WORDS | MATERIAL_WORDS | COLOUR_WORDS:
                found.append(word)
            elif position > 0 and word[0].isupper() and word.lower() not in PLAIN_CAPITALS:
                found.append(word)
    return found


def repeated_ngrams(text: str, n: int = REPEAT_N) -> list[tuple[str, ...]]:
    """The runs of ``n`` words (lower-cased) that occur more than once in ``text``, read once with
    hyphenated words whole and once split into their parts."""
    found = []
    for tokens in ([w.lower() for w in words(text)], PART.findall(text.lower())):
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        found += [gram for gram, count in counts.items() if count > 1 and gram not in found]
    return found


def stutters(text: str) -> list[str]:
    """The words of ``MIN_STUTTER_LETTERS`` letters or more that come back within ``STUTTER_WINDOW``
    words ("stylish and stylish")."""
    tokens = [_fold(w) for w in words(text)]
    return [word for i, word in enumerate(tokens)
            if len(word) >= MIN_STUTTER_LETTERS and word in tokens[i + 1:i + 1 + STUTTER_WINDOW]]


def echoes(pitch: str, prompt_text: str, title: str) -> bool:
    """Whether ``pitch`` repeats ``ECHO_N`` words in a row of the prompt's own text or a label of it,
    or says fewer than ``MIN_NEW_WORDS`` words (stopwords aside) beyond the title's."""
    if re.search(r"\b(?:product|description|customer bought)\s*:", pitch, re.I):
        return True
    title_words = {_fold(w) for w in words(title)}
    if len([w for w in words(pitch) if _fold(w) not in title_words and w.lower() not in STOPWORDS]) < MIN_NEW_WORDS:
        return True
    own = prompt_text.replace(title, " ").replace(display_title(title), " ")
    own_words = [w.lower() for w in words(own)]
    grams = {tuple(own_words[i:i + ECHO_N]) for i in range(len(own_words) - ECHO_N + 1)}
    pitch_words = [w.lower() for w in words(pitch)]
    return any(tuple(pitch_words[i:i + ECHO_N]) in grams for i in range(len(pitch_words) - ECHO_N + 1))


def violations(pitch: str, title: str, because: str | None = None, prompt_text: str = "") -> list[str]:
    """The rules (of ``RULES``, in order) that ``pitch`` fails for a product titled ``title``."""
    title, because = plain(title), because and plain(because)
    failed = []
    pitch_words = words(pitch)
    if not _title_words(title) & {_fold(w) for w in pitch_words}:
        failed.append("names_product")
    if invented(pitch, [title] + ([because] if because else [])):
        failed.append("invented_fact")
    if repeated_ngrams(pitch) or stutters(pitch):
        failed.append("repeated_ngram")
    if echoes(pitch, prompt_text, title):
        failed.append("echo")
    if not (MIN_WORDS <= len(pitch_words) <= MAX_WORDS and 1 <= len(_sentences(pitch)) <= MAX_SENTENCES):
        failed.append("length")
    if not re.search(r"[.!?][\"')\]]*$", pitch.strip()):
        failed.append("unfinished")
    return failed


def template(title: str, because: str | None = None) -> str:
    """The sentence published when no sample passes: the title and nothing it does not say."""
    if because:
        return f"{display_title(title)}, picked for you because you bought {display_title(because)}."
    return f"{display_title(title)}, picked for you."


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What is published for one product, and why.

    Attributes:
      pitch: the published sentence.
      source: ``generated`` (a sample passed every rule) or ``template``.
      failed: for each rule, how many of the samples failed it.
      samples: how many samples were judged.
      score: the published sample's score (None for a template).
    """

    pitch: str
    source: str
    failed: dict[str, int]
    samples: int
    score: float | None = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def choose(samples: Sequence[str], title: str, because: str | None = None, prompt_text: str = "",
           score: Callable[[list[str], str], list[float]] | None = None) -> Verdict:
    """The best passing sample by ``score(passing, title)`` (higher is better; the first when no
    score), else the template."""
    judged = [(sample, violations(sample, title, because, prompt_text)) for sample in samples]
    failed = Counter(rule for _, rules in judged for rule in rules)
    counts = {rule: failed[rule] for rule in RULES if failed[rule]}
    passing = [sample for sample, rules in judged if not rules]
    if not passing:
        return Verdict(template(title, because), "template", counts, len(samples))
    scores = list(score(passing, title)) if score is not None else [0.0] * len(passing)
    best = max(range(len(passing)), key=lambda i: scores[i])
    return Verdict(passing[best], "generated", counts, len(samples), round(float(scores[best]), 4))

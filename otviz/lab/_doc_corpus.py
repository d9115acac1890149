"""The word lists and the seeded generator behind :func:`otviz.lab.documents.document_corpus`.

Six classes of short documents. Each class has nine *concepts*, each written with
three or four synonyms ("doctor", "physician", "surgeon"); a document picks one
synonym per concept it mentions and sticks to it, so two documents of the same
class often share no word at all for the same idea. Around them: *ambiguous* words that belong to
two or three classes ("pitch", "stock", "pressure", "record"), *generic* words of
every class ("people", "week", "report") and a few words of another class. A
document is a bag of content words (stop words removed, as in Kusner et al.
2015), written as a space-separated string.
"""

from __future__ import annotations

#: class -> concept -> synonyms (every word lower-case, one token)
CONCEPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "sport": {
        "game": ("game", "match", "fixture"),
        "team": ("team", "squad", "club"),
        "player": ("player", "athlete", "striker", "defender"),
        "win": ("win", "victory", "triumph"),
        "coach": ("coach", "trainer", "manager"),
        "stadium": ("stadium", "arena", "ground"),
        "goal": ("goal", "touchdown", "basket"),
        "league": ("league", "championship", "tournament"),
        "ball": ("ball", "football", "soccer", "rugby"),
    },
    "food": {
        "cook": ("cook", "chef", "baker"),
        "meal": ("meal", "dinner", "supper", "lunch"),
        "recipe": ("recipe", "dish", "cuisine"),
        "taste": ("taste", "flavour", "aroma"),
        "oven": ("oven", "stove", "grill", "pan"),
        "tasty": ("delicious", "tasty", "savoury"),
        "vegetables": ("vegetables", "salad", "carrots", "onions"),
        "restaurant": ("restaurant", "cafe", "bistro"),
        "ingredients": ("ingredients", "spices", "herbs", "garlic"),
    },
    "weather": {
        "rain": ("rain", "showers", "drizzle", "downpour"),
        "storm": ("storm", "gale", "thunderstorm"),
        "wind": ("wind", "breeze", "gusts"),
        "sunny": ("sunny", "sunshine", "warm"),
        "cloudy": ("cloudy", "overcast", "fog"),
        "icy": ("freezing", "chilly", "icy", "frost"),
        "forecast": ("forecast", "meteorologist", "outlook"),
        "temperature": ("temperature", "degrees", "celsius"),
        "snow": ("snow", "sleet", "hail", "blizzard"),
    },
    "finance": {
        "money": ("money", "cash", "funds"),
        "bank": ("bank", "lender", "banker"),
        "loan": ("loan", "credit", "mortgage", "debt"),
        "price": ("price", "cost", "fee"),
        "investors": ("investors", "shareholders", "traders"),
        "profit": ("profit", "earnings", "revenue"),
        "market": ("market", "economy", "inflation"),
        "shares": ("shares", "equities", "bonds", "dividend"),
        "tax": ("tax", "taxes", "levy"),
    },
    "health": {
        "doctor": ("doctor", "physician", "surgeon"),
        "hospital": ("hospital", "clinic", "ward"),
        "patient": ("patient", "patients", "sufferer"),
        "illness": ("illness", "disease", "infection", "virus"),
        "medicine": ("medicine", "drug", "medication", "pill"),
        "nurse": ("nurse", "nurses", "paramedic"),
        "treatment": ("treatment", "therapy", "surgery"),
        "pain": ("pain", "ache", "symptoms"),
        "vaccine": ("vaccine", "injection", "antibiotics"),
    },
    "music": {
        "song": ("song", "tune", "melody"),
        "band": ("band", "orchestra", "ensemble"),
        "singer": ("singer", "vocalist", "soprano"),
        "concert": ("concert", "gig", "festival"),
        "instrument": ("guitar", "piano", "violin", "drums"),
        "album": ("album", "single", "release"),
        "lyrics": ("lyrics", "verses", "chorus"),
        "composer": ("composer", "songwriter", "musician"),
        "rhythm": ("rhythm", "beat", "tempo"),
    },
}

#: class -> words it shares with other classes (each listed under every class that uses it)
AMBIGUOUS: dict[str, tuple[str, ...]] = {
    "sport": ("score", "pitch", "record", "crowd", "season", "course", "heat", "table", "shot",
              "strike", "cup", "training", "bowl"),
    "food": ("stock", "season", "course", "heat", "plate", "table", "cup", "bowl", "tip", "fresh",
             "bar", "bass"),
    "weather": ("cold", "pressure", "season", "heat", "cover", "drop", "rise", "strike", "chart",
                "fresh"),
    "finance": ("record", "stock", "pressure", "chart", "drop", "rise", "recovery", "growth",
                "note", "tip", "balance", "strike", "cover"),
    "health": ("cold", "pressure", "recovery", "growth", "shot", "course", "balance", "training",
               "chart", "heat"),
    "music": ("score", "pitch", "record", "crowd", "chart", "note", "bass", "bar", "plate", "cup", "cover"),
}

#: words of every class
GENERIC: tuple[str, ...] = (
    "people", "year", "week", "new", "good", "great", "time", "city", "local", "report",
    "today", "big", "first", "many", "last", "day", "news", "world", "country", "morning",
    "family", "friends", "public", "weekend", "change",
)

#: how a token of a document is drawn: a word of one of the document's concepts, an ambiguous
#: word of its class, a generic word, a concept word of another class
MIXTURE: dict[str, float] = {"concept": 0.5, "ambiguous": 0.2, "generic": 0.2, "other class": 0.1}
#: a document mentions this many of its class's nine concepts (inclusive range)
CONCEPTS_PER_DOCUMENT = (3, 5)


def vocabulary() -> tuple[str, ...]:
    """Every word the generator can write, sorted."""
    words = {w for concepts in CONCEPTS.values() for syn in concepts.values() for w in syn}
    words |= {w for amb in AMBIGUOUS.values() for w in amb} | set(GENERIC)
    return tuple(sorted(words))


def draw_document(rng, cls: str, length: tuple[int, int]) -> str:
    """One document of class ``cls``: ``length[0]`` to ``length[1]`` words drawn with ``rng``
    (a :class:`numpy.random.Generator`) as described in the module docstring."""
    classes = list(CONCEPTS)
    concepts = list(CONCEPTS[cls].values())
    lo, hi = CONCEPTS_PER_DOCUMENT
    active = rng.choice(len(concepts), size=int(rng.integers(lo, hi + 1)), replace=False)
    synonym = {int(i): int(rng.integers(len(concepts[i]))) for i in active}
    kinds = list(MIXTURE)
    p = [MIXTURE[k] for k in kinds]
    words = []
    for _ in range(int(rng.integers(length[0], length[1] + 1))):
        kind = kinds[int(rng.choice(len(kinds), p=p))]
        if kind == "concept":
            i = int(active[rng.integers(len(active))])
            syn = concepts[i]
            words.append(syn[synonym[i]])
        elif kind == "ambiguous":
            words.append(AMBIGUOUS[cls][rng.integers(len(AMBIGUOUS[cls]))])
        elif kind == "generic":
            words.append(GENERIC[rng.integers(len(GENERIC))])
        else:
            other = classes[(classes.index(cls) + 1 + int(rng.integers(len(classes) - 1))) % len(classes)]
            syn = list(CONCEPTS[other].values())[int(rng.integers(len(CONCEPTS[other])))]
            words.append(syn[rng.integers(len(syn))])
    return " ".join(words)

"""A small sentence-topic task generated offline, for trying transfer with text models.

Four topics (sport, food, weather, money), 20 topic words each, and ten
sentence templates shared by every topic (``"{name} talked about {word}
{time}."``): the topic of a sentence is carried by its topic word only, so a
classifier must know what the word means. The split makes that knowledge the
point of the task:

- ``train``: ``k`` labelled sentences per topic, written with the first 10
  words of each topic and the first 7 templates;
- ``unlabelled``: sentences with any of the 20 words and the first 7
  templates, without labels (what a teacher's representation can be
  transferred on);
- ``test``: sentences written only with the last 10 words of each topic,
  never labelled, and the last 3 templates, never seen in training.

A student trained from scratch on the labelled sentences never sees a test
word with a label; a pretrained sentence encoder (all-MiniLM-L6-v2) places
"hockey" near "football". Nothing is downloaded: the sentences come from the
word lists and templates below, drawn with a seeded generator.
"""

from __future__ import annotations

import numbers
import random
from dataclasses import dataclass

import torch

__all__ = ["TOPICS", "TopicSentences", "topic_sentences"]

#: Topic -> its 20 words; the first 10 appear with labels, the last 10 only in the test set
#: (and unlabelled).
TOPICS: dict[str, tuple[str, ...]] = {
    "sport": ("football", "tennis", "basketball", "the marathon", "swimming", "cycling",
              "the world cup", "golf", "rugby", "volleyball",
              "boxing", "skiing", "the olympics", "baseball", "hockey", "cricket",
              "the league table", "the final match", "sprinting", "wrestling"),
    "food": ("pasta", "baking bread", "sushi", "the new bakery", "chocolate cake", "vegetable soup",
             "pizza", "cheese", "grilled fish", "curry",
             "pancakes", "the restaurant menu", "salads", "dumplings", "roast chicken",
             "fresh fruit", "cookies", "noodles", "breakfast recipes", "spices"),
    "weather": ("the storm", "heavy rain", "the heatwave", "snowfall", "the forecast", "thunder",
                "the hurricane", "fog", "strong winds", "the cold front",
                "hail", "the drought", "sunshine", "frost", "the flood warning", "humidity",
                "the tornado", "clouds", "the monsoon", "freezing temperatures"),
    "money": ("the stock market", "interest rates", "inflation", "taxes", "the bank loan",
              "mortgages", "savings accounts", "the budget", "bitcoin", "salaries",
              "the pension fund", "credit cards", "investments", "the exchange rate", "debt",
              "the housing market", "bonds", "dividends", "insurance premiums",
              "retirement savings"),
}
_LABELLED_WORDS = 10

_TEMPLATES = (
    "{name} talked about {word} {time}.",
    "I read a long article about {word} {time}.",
    "Everyone at work was discussing {word}.",
    "My sister is really into {word} these days.",
    "We spent the whole evening on {word}.",
    "The news had a story on {word} {time}.",
    "{name} asked me a question about {word}.",
    # held out: test sentences only
    "There is a new podcast about {word}.",
    "{name} wrote a blog post on {word} {time}.",
    "Nobody expected so much interest in {word}.",
)
_TRAIN_TEMPLATES = 7
_NAMES = ("Anna", "Ben", "Carla", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jonas")
_TIMES = ("yesterday", "this morning", "last week", "on Sunday", "after lunch", "tonight")


@dataclass(frozen=True)
class TopicSentences:
    """The sentence-topic task (see :mod:`otviz.sentences`).

    Attributes
    ----------
    topics : tuple of str
        Class names; label ``i`` is ``topics[i]``.
    train, unlabelled, test : list of str
        The sentences of each split.
    train_labels, test_labels : torch.Tensor
        Class indices (int64) of ``train`` and ``test``.
    """

    topics: tuple[str, ...]
    train: list[str]
    train_labels: torch.Tensor
    unlabelled: list[str]
    test: list[str]
    test_labels: torch.Tensor

    @property
    def num_classes(self) -> int:
        """Number of topics (chance accuracy is ``1 / num_classes``)."""
        return len(self.topics)


def _count(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def topic_sentences(k: int = 8, n_unlabelled: int = 256, n_test: int = 200,
                    seed: int = 0) -> TopicSentences:
    """Generate the sentence-topic task.

    Parameters
    ----------
    k : int, default 8
        Labelled training sentences per topic.
    n_unlabelled : int, default 256
        Unlabelled sentences (topics in turn, any of the 20 words).
    n_test : int, default 200
        Test sentences (topics in turn, held-out words and templates).
    seed : int, default 0
        Seed of the draws; the same arguments give the same sentences.

    Returns
    -------
    TopicSentences

    Examples
    --------
    >>> data = topic_sentences(k=2, n_unlabelled=8, n_test=4)
    >>> data.topics, len(data.train), data.train_labels.tolist()
    (('sport', 'food', 'weather', 'money'), 8, [0, 0, 1, 1, 2, 2, 3, 3])
    """
    k = _count(k, "k", 1)
    n_unlabelled = _count(n_unlabelled, "n_unlabelled", 0)
    n_test = _count(n_test, "n_test", 1)
    seed = _count(seed, "seed", 0)
    rng = random.Random(seed)
    topics = tuple(TOPICS)

    def sentence(topic: str, words: slice, templates: slice) -> str:
        template = rng.choice(_TEMPLATES[templates])
        word = rng.choice(TOPICS[topic][words])
        return template.format(name=rng.choice(_NAMES), word=word, time=rng.choice(_TIMES))

    seen, held = slice(0, _LABELLED_WORDS), slice(_LABELLED_WORDS, None)
    train_t, test_t = slice(0, _TRAIN_TEMPLATES), slice(_TRAIN_TEMPLATES, None)
    train, train_y = [], []
    for label, topic in enumerate(topics):
        for _ in range(k):
            train.append(sentence(topic, seen, train_t))
            train_y.append(label)
    unlabelled = [sentence(topics[i % len(topics)], slice(None), train_t) for i in range(n_unlabelled)]
    rng.shuffle(unlabelled)
    test, test_y = [], []
    for i in range(n_test):
        label = i % len(topics)
        test.append(sentence(topics[label], held, test_t))
        test_y.append(label)
    return TopicSentences(topics, train, torch.tensor(train_y, dtype=torch.long), unlabelled,
                          test, torch.tensor(test_y, dtype=torch.long))

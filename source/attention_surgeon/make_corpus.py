"""The corpus of Notebook 3: simple English-like sentences, generated from a seed (no downloads).

    python make_corpus.py            # prints the corpus (seed 0) to stdout
    from make_corpus import make_corpus
    text = make_corpus(seed=0)       # the same text every time, on every machine

Its sentences follow a handful of patterns, so a tiny character-level model
that only looks at the past can learn them in a few seconds, and a model that
peeks at the next character can "learn" them much faster (that is the point).
"""
import random
import sys

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the robot", "our cook"]
VERBS = ["sees", "likes", "finds", "makes", "wants", "reads", "draws", "helps"]
OBJECTS = ["the ball", "a book", "the cake", "a song", "the map", "a tree", "the box", "a letter"]
PLACES = ["at home", "in the park", "by the sea", "on the hill", "at school", "in the rain"]
TIMES = ["today", "at night", "every day", "in the morning", "after lunch"]
NUM_SENTENCES = 400  # about 12,900 characters: enough patterns to learn, small enough for seconds of training


def sentence(rng):
    words = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS)]
    if rng.random() < 0.5:
        words.append(rng.choice(PLACES))
    if rng.random() < 0.3:
        words.append(rng.choice(TIMES))
    return " ".join(words) + "."


def make_corpus(seed=0, num_sentences=NUM_SENTENCES):
    """`num_sentences` sentences, one per line, the same for the same seed."""
    rng = random.Random(seed)
    return "\n".join(sentence(rng) for _ in range(num_sentences)) + "\n"


if __name__ == "__main__":
    sys.stdout.write(make_corpus(int(sys.argv[1]) if len(sys.argv) > 1 else 0))

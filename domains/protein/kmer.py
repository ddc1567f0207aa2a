"""A k-mer logistic-regression classifier: the baseline for label prediction and the judge of
control accuracy for generated sequences.

Features are the counts of every overlapping 1- to k-mer of the residue string, L2-normalised per
sequence (``CountVectorizer(analyzer="char")`` + ``normalize``); the model is a multinomial
``LogisticRegression``. Not covered: gapped k-mers, reduced alphabets.
"""

from __future__ import annotations

from adaptome.domains.protein.formats import ProteinError


class KmerClassifier:
    def __init__(self, k: int = 3, C: float = 10.0, seed: int = 0):
        self.k, self.C, self.seed = k, C, seed

    def _features(self, seqs: list[str]):
        from sklearn.preprocessing import normalize

        return normalize(self.vec.transform([s or "X" for s in seqs]))  # (n, n_kmers), sparse

    def fit(self, seqs: list[str], labels: list[str]) -> "KmerClassifier":
        from sklearn.feature_extraction.text import CountVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import normalize

        if len(set(labels)) < 2:
            raise ProteinError("the k-mer classifier needs at least two classes")
        self.vec = CountVectorizer(analyzer="char", ngram_range=(1, self.k), lowercase=False)
        x = normalize(self.vec.fit_transform(seqs))  # (n, n_kmers)
        self.clf = LogisticRegression(C=self.C, max_iter=5000, random_state=self.seed).fit(x, labels)
        return self

    def predict(self, seqs: list[str]) -> list[str]:
        return list(self.clf.predict(self._features(seqs)))

    @property
    def classes(self) -> list[str]:
        return list(self.clf.classes_)

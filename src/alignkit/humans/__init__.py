"""Models of the people who give feedback, and learning a reward from their choices.

* :mod:`~alignkit.humans.human_models` — how a person turns utilities into a choice
  (Boltzmann, regret, myopic, B-Pref), as pure functions, and simulated annotators over them;
* :mod:`~alignkit.humans.annotators` — the :class:`~alignkit.humans.annotators.Annotator`
  protocol the loops use, populations, AI judges, and :class:`HumanAnnotator` (real people
  through the annotation server's client in :mod:`alignkit.feedback.client`);
* :mod:`~alignkit.humans.posterior` — a Bayesian posterior over linear reward weights under a
  human model;
* :mod:`~alignkit.humans.query` — which pairs to ask about next (every query strategy).

The store that collects real answers is :mod:`alignkit.feedback`; this package sits above it
(it may import the client), never below.
"""

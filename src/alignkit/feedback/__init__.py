"""Collecting answers from people: the feedback store, its database, accounts and exports.

Everything here is about *what people said* and keeping it safe: the tables
(:mod:`~alignkit.feedback.schema`) and engine (:mod:`~alignkit.feedback.db`), accounts and
their secrets (:mod:`~alignkit.feedback.accounts`, :mod:`~alignkit.feedback.auth`), the items
to judge and the answers given (:mod:`~alignkit.feedback.items`,
:mod:`~alignkit.feedback.answers`, :mod:`~alignkit.feedback.media`), the store over them
(:mod:`~alignkit.feedback.store`, :mod:`~alignkit.feedback.values`,
:mod:`~alignkit.feedback.errors`, :mod:`~alignkit.feedback.text`), conversations with models
(:mod:`~alignkit.feedback.conversations`), and what is read back out of the votes: exports,
agreement between annotators (:mod:`~alignkit.feedback.agreement`), the arena leaderboard
(:mod:`~alignkit.feedback.leaderboard`), revisions written from people's comments
(:mod:`~alignkit.feedback.revision`) and the HTTP client (:mod:`~alignkit.feedback.client`).

Models of the people who give the answers — simulated annotators, their choice math, the
posterior over a reward learnt from them, which query to ask next — are in
:mod:`alignkit.humans`, which may import from here; nothing here imports from there.
"""

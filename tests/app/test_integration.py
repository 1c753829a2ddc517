"""The loop's HumanAnnotator through a live server: pairs go out, a bot labels them in the UI's
API, the soft labels come back (the path `alignkit loop` takes with `annotator: human`)."""

import pytest

from alignkit.feedback.client import AnnotationClient
from alignkit.feedback.store import FeedbackStore
from alignkit.humans.annotators import HumanAnnotator


@pytest.mark.timeout(120)
def test_human_annotator_round_trip(tmp_path, start_server):
    db = tmp_path / "loop.db"
    store = FeedbackStore(db)
    store.ensure_project("loop", overlap=2, gold_every=0)
    admin = store.add_user("boss", role="admin", password=False).token
    people = [store.add_user(n, password=False, projects=["loop"]).token for n in ("ann", "bob")]
    store.close()
    server = start_server(db, "loop")
    pairs = [("Say hi", "hello!", "go away"), ("2+2?", "4", "5"), ("Sky?", "blue", "green")]
    waits = []

    def label_while_waiting(seconds):
        """Instead of sleeping: the people label the queued pairs (ann likes a; bob ties once)."""
        waits.append(seconds)
        for who, token in zip(("ann", "bob"), people, strict=True):
            with AnnotationClient(server.url, token) as person:
                while (task := person.next_task()) is not None:
                    good = pairs[[p[0] for p in pairs].index(task["prompt"])][1]
                    if who == "bob" and task["prompt"] == "Sky?":
                        person.submit(task["assignment_id"], choice="tie")
                    else:
                        shown = "A" if task["responses"][0] == good else "B"
                        person.submit(task["assignment_id"], choice=shown)

    with AnnotationClient(server.url, admin) as client:
        human = HumanAnnotator(
            client, project="loop", poll_s=1.0, timeout_s=10, sleep=label_while_waiting
        )
        labels = human.label(pairs)
    assert waits == [1.0]  # nothing labelled on the first poll, everything after one wait
    assert [(c.prompt, c.a, c.b) for c in labels] == pairs
    assert [c.mu for c in labels] == [1.0, 1.0, 0.75]  # Sky?: mean of a (1) and tie (½)
    assert all(c.meta["n_votes"] == 2 for c in labels)

"""What a verdict means is decided in one place (pipeline/disposition.py): the words the log,
the metrics, `scan` and `test` use all come from it."""

from __future__ import annotations

from frontfilter import metrics
from frontfilter.pipeline.disposition import Disposition, refusal
from frontfilter.reply import Reply
from frontfilter.rules.model import Action, Verdict


def test_the_messages_metric_has_one_label_per_disposition() -> None:
    assert metrics.VERDICTS - {"other"} == {d.value for d in Disposition}    # "other": the bound's catch-all


def test_only_an_accepted_message_is_forwarded() -> None:
    assert [d for d in Disposition if d.forwarded] == [Disposition.ACCEPTED]
    for action in (Action.STRIP, Action.TAG, Action.ADD_HEADER, Action.ACCEPT, None):
        assert Disposition.of_action(action) is Disposition.ACCEPTED, action
    assert Disposition.of_action(Action.QUARANTINE) is Disposition.QUARANTINED


def test_a_reject_answered_4xx_is_a_tempfail_for_the_client_and_the_log() -> None:
    soft = Verdict(action=Action.REJECT, reply=Reply(450, "4.7.1", "Not now"), rule="soft")
    assert refusal(soft) == (Disposition.TEMPFAILED, Reply(450, "4.7.1", "Not now"))
    hard = Verdict(action=Action.REJECT, rule="hard")
    disposition, answer = refusal(hard)
    assert disposition is Disposition.REJECTED and answer.code == 554


def test_either_word_names_a_disposition() -> None:
    for disposition in Disposition:
        assert Disposition.of_word(disposition.value) is disposition
        assert Disposition.of_word(disposition.action_word) is disposition
    assert Disposition.of_word("strip") is None

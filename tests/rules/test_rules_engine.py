"""The engine on hand-built facts: per-part semantics, combinators, actions, modes, stages."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_helpers import body_part, facts, part, ruleset, view

from frontfilter import reply
from frontfilter.content.facts import Ambiguity, Limit
from frontfilter.model import Stage
from frontfilter.rules import Action, Mode, RuleSetError, load_ruleset

EXE = "application/x-dosexec"


def test_reason_names_the_part_the_fact_and_the_pattern(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "exe"\nattachment.detected_type = "application/x-*"\naction = "reject"\n')
    member = part("2/a.zip/evil.exe", name="evil.exe", declared="application/zip", detected=EXE, in_archive=True)
    verdict = rules.evaluate(facts(message=view(body_part(), part("2", name="a.zip", declared="application/zip"), member)))
    assert verdict.action is Action.REJECT and verdict.rule == "exe"
    assert verdict.reply == reply.REJECTED
    assert verdict.matches[0].reasons == (
        "attachment 2/a.zip/evil.exe: attachment.detected_type application/x-dosexec matches application/x-*",)
    assert verdict.matches[0].parts == ("2/a.zip/evil.exe",)


def test_one_part_must_meet_all_attachment_conditions(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nattachment.extension = ["exe"]\n'
                              'attachment.in_archive = true\naction = "reject"\n')
    # An exe at top level and a harmless member in an archive: no single part has both.
    split = view(part("2", name="a.exe", detected=EXE), part("3/x.zip/readme.txt", name="readme.txt", in_archive=True))
    assert rules.evaluate(facts(message=split)).action is None
    joined = view(part("3/x.zip/a.exe", name="a.exe", in_archive=True))
    assert rules.evaluate(facts(message=joined)).action is Action.REJECT


def test_extension_matches_any_extension_of_a_double_extension(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nattachment.extension = [".EXE"]\naction = "reject"\n')
    assert rules.evaluate(facts(message=view(part(name="invoice.pdf.exe")))).action is Action.REJECT
    assert rules.evaluate(facts(message=view(part(name="invoice.pdf")))).action is None


def test_filename_also_tests_the_alternative_name_when_inspection_reports_one(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nattachment.filename = "*.exe"\naction = "reject"\n')
    sneaky = part(name="invoice.pdf", alt_filename="invoice.exe")
    assert rules.evaluate(facts(message=view(sneaky))).action is Action.REJECT


def test_strip_removes_exactly_the_matched_mime_leaves_once(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "macros"\nattachment.has_macros = true\naction = "strip"\n'
                              'notice = "{filename} removed by {rule}"\n'
                              '[[rule]]\nname = "docm"\nattachment.filename = "*.docm"\naction = "strip"\n')
    zipped = part("3/m.zip/a.docm", name="a.docm", has_macros=True, in_archive=True)
    zipped2 = part("3/m.zip/b.docm", name="b.docm", has_macros=True, in_archive=True)
    plain = part("4", name="c.docx")
    verdict = rules.evaluate(facts(message=view(body_part(), zipped, zipped2, plain)))
    assert verdict.action is None
    assert [(s.mime_path, s.rule, s.part.path, s.notice) for s in verdict.strip] == [
        ("3", "macros", "3/m.zip/a.docm", "{filename} removed by {rule}")]
    assert [m.rule for m in verdict.matches] == ["macros", "docm"]


def test_not_on_attachment_conditions_is_per_part(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "only-pdf"\nattachment.disposition = "attachment"\n'
                              'not = { attachment.detected_type = "application/pdf" }\naction = "strip"\n')
    verdict = rules.evaluate(facts(message=view(body_part(), part("2", name="a.pdf", declared="application/pdf"),
                                                part("3", name="b.png", declared="image/png"))))
    assert [s.mime_path for s in verdict.strip] == ["3"]
    assert "attachment 3: not (attachment.detected_type = \"application/pdf\")" in verdict.matches[0].reasons


@pytest.mark.parametrize("where", ["attachment.any = [ { extension = [\"exe\"] }, { detected_type = \"application/x-*\" } ]",
                                   "any = [ { attachment.extension = [\"exe\"] }, { attachment.detected_type = \"application/x-*\" } ]"])
def test_any_of_attachment_conditions_inside_or_outside_attachment(tmp_path: Path, where: str) -> None:
    rules = ruleset(tmp_path, f'[[rule]]\nname = "r"\n{where}\naction = "strip"\n')
    verdict = rules.evaluate(facts(message=view(part("2", name="a.exe"), part("3", name="b", detected="application/x-elf"),
                                                part("4", name="c.txt", declared="text/plain"))))
    assert [s.mime_path for s in verdict.strip] == ["2", "3"]


def test_message_and_attachment_conditions_mix_in_any(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nany = [ { subject = "*urgent*" }, { attachment.extension = ["zip"] } ]\n'
                              'not = { sender.domain = ["example.org"] }\naction = "reject"\n')
    assert rules.evaluate(facts(message=view(part(name="a.zip")), sender="x@evil.test")).action is Action.REJECT
    assert rules.evaluate(facts(message=view(part(name="a.zip")), sender="x@example.org")).action is None
    assert rules.evaluate(facts(message=view(part(name="a.pdf")), sender="x@evil.test")).action is None
    # The rule is evaluated per part; for any part the subject branch holds, so it matches.
    assert rules.evaluate(facts(message=view(part(name="a.pdf"), subject="URGENT now"), sender="x@evil.test")).action is Action.REJECT


def test_terminal_action_ends_evaluation_and_keeps_what_came_before(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "t"\naction = "tag"\ntag = "seen"\n'
                              '[[rule]]\nname = "h"\naction = "add_header"\nheader = { name = "X-Seen", value = "yes" }\n'
                              '[[rule]]\nname = "stop"\naction = "accept"\n'
                              '[[rule]]\nname = "never"\naction = "reject"\n')
    verdict = rules.evaluate(facts())
    assert (verdict.action, verdict.rule, verdict.reply) == (Action.ACCEPT, "stop", None)
    assert verdict.tags == ("seen",) and verdict.headers == (("X-Seen", "yes"),)
    assert [m.rule for m in verdict.matches] == ["t", "h", "stop"]
    assert Action.ACCEPT.terminal and not Action.STRIP.terminal


def test_monitor_rule_is_recorded_but_never_acts(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "try"\nmode = "monitor"\nattachment.extension = ["pdf"]\naction = "reject"\n'
                              '[[rule]]\nname = "try-strip"\nmode = "monitor"\nattachment.extension = ["pdf"]\naction = "strip"\n'
                              '[[rule]]\nname = "tag"\naction = "tag"\ntag = "pdf"\n')
    verdict = rules.evaluate(facts(message=view(part(name="a.pdf"))))
    assert verdict.action is None and verdict.strip == () and verdict.tags == ("pdf",)
    assert [(m.rule, m.mode) for m in verdict.matches] == [("try", Mode.MONITOR), ("try-strip", Mode.MONITOR), ("tag", Mode.ENFORCE)]


def test_soft_reject_turns_5xx_into_4xx_and_says_so(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\naction = "reject"\nreply = "550 5.7.1 Go away"\n')
    verdict = rules.evaluate(facts(), soft_reject=True)
    assert verdict.action is Action.REJECT and verdict.softened
    assert verdict.reply is not None and verdict.reply.wire == "450 4.7.1 Go away"
    assert rules.evaluate(facts()).reply.wire == "550 5.7.1 Go away"  # type: ignore[union-attr]


def test_only_rules_of_the_stage_run_and_stages_lists_them(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "c"\nstage = "connect"\nclient.ip = ["198.51.100.0/24", "2001:db8::/32"]\naction = "reject"\n'
                              '[[rule]]\nname = "d"\naction = "tag"\ntag = "x"\n')
    assert rules.stages == {Stage.CONNECT, Stage.DATA} and len(rules) == 2
    assert rules.evaluate(facts(Stage.CONNECT)).rule == "c"
    assert rules.evaluate(facts(Stage.CONNECT, ip="::ffff:198.51.100.9")).rule == "c"
    assert rules.evaluate(facts(Stage.CONNECT, ip="2001:db8::1")).rule == "c"
    assert rules.evaluate(facts(Stage.CONNECT, ip="192.0.2.1")).action is None
    assert rules.evaluate(facts(Stage.HELO)).matches == ()
    assert rules.evaluate(facts(Stage.DATA)).tags == ("x",)


def test_session_and_envelope_conditions(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "helo"\nstage = "helo"\nhelo = [{ regex = "^\\\\d+\\\\.\\\\d+" }, "localhost"]\naction = "reject"\n'
                              '[[rule]]\nname = "notls"\nstage = "mail"\ntls = false\nauth = false\nsender.domain = "*.bank.test"\naction = "reject"\n'
                              '[[rule]]\nname = "staff"\nstage = "mail"\nauth.user = "*@staff.test"\naction = "accept"\n')
    assert rules.evaluate(facts(Stage.HELO, helo="LOCALHOST")).rule == "helo"
    assert rules.evaluate(facts(Stage.HELO, helo="1.2.3.4")).rule == "helo"
    assert rules.evaluate(facts(Stage.HELO)).action is None
    assert rules.evaluate(facts(Stage.MAIL, sender="x@mail.BANK.test")).rule == "notls"
    assert rules.evaluate(facts(Stage.MAIL, sender="x@mail.bank.test", tls=True)).action is None
    assert rules.evaluate(facts(Stage.MAIL, auth_user="ann@staff.test")).rule == "staff"


def test_recipient_is_the_one_decided_at_rcpt_and_any_accepted_at_data(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nstage = "rcpt"\nrecipient.address = "CEO@example.com"\naction = "tempfail"\n'
                              '[[rule]]\nname = "count"\nstage = "rcpt"\nrecipients.count = { over = 2 }\naction = "reject"\n'
                              '[[rule]]\nname = "d"\nrecipient.domain = "example.com"\naction = "tag"\ntag = "internal"\n')
    assert rules.evaluate(facts(Stage.RCPT, recipient="ceo@example.com")).reply == reply.TEMPFAIL
    assert rules.evaluate(facts(Stage.RCPT, recipient="x@example.com")).action is None
    three = facts(Stage.RCPT, recipient="c@example.net")
    three = type(three)(three.stage, three.session, type(three.envelope)("a@b.c", ("a@x.y", "b@x.y")), three.recipient)
    assert rules.evaluate(three).rule == "count"
    assert rules.evaluate(facts(recipients=("a@example.net", "b@Example.COM"))).tags == ("internal",)


def test_message_conditions(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "hdr"\nheader.X-Mailer = { regex = "^BadMailer", case = true }\naction = "tag"\ntag = "mailer"\n'
                              '[[rule]]\nname = "body"\nbody = { regex = "bitcoin\\\\s+wallet" }\naction = "tag"\ntag = "btc"\n'
                              '[[rule]]\nname = "big"\nsize = { over = "1MiB" }\naction = "tag"\ntag = "big"\n'
                              '[[rule]]\nname = "subj"\nsubject = "*invoice*"\naction = "tag"\ntag = "inv"\n')
    message = view(subject="Your INVOICE", text=("Send to my Bitcoin   wallet",), size=2 * 1024 * 1024,
                   headers=(("X-Mailer", "BadMailer 1.0"),))
    assert rules.evaluate(facts(message=message)).tags == ("mailer", "btc", "big", "inv")
    lower = view(headers=(("X-Mailer", "badmailer 1.0"),), size=1024 * 1024)
    assert rules.evaluate(facts(message=lower)).tags == ()


def test_inspection_limits_and_ambiguities(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "any-limit"\ninspection.limit = true\nmode = "monitor"\naction = "reject"\n'
                              '[[rule]]\nname = "bomb"\ninspection.limit = ["compression_ratio"]\naction = "reject"\n'
                              '[[rule]]\nname = "amb"\nambiguity = true\naction = "tempfail"\n')
    bomb = view(limits_exceeded=frozenset({Limit.COMPRESSION_RATIO}))
    verdict = rules.evaluate(facts(message=bomb))
    assert verdict.rule == "bomb" and verdict.matches[1].reasons == ("inspection.limit compression_ratio",)
    assert rules.evaluate(facts(message=view(ambiguities=frozenset({Ambiguity.BASE64_JUNK})))).rule == "amb"
    assert rules.evaluate(facts()).matches == ()


def test_size_units_and_attachment_size(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nattachment.size = { over = "1.5KB", under = "2KiB" }\naction = "strip"\n')
    verdict = rules.evaluate(facts(message=view(part("2", size=1500), part("3", size=1501), part("4", size=2048))))
    assert [s.mime_path for s in verdict.strip] == ["3"]


def test_list_files_exact_and_glob_entries_with_comments(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "partners"\nstage = "mail"\nsender.domain = ["@lists/partners.txt", "extra.test"]\naction = "accept"\n',
                    {"lists/partners.txt": "# partners\nPartner.example  # since 2020\n*.partner.test\n\n"})
    for sender, expected in [("a@partner.example", Action.ACCEPT), ("a@x.Partner.TEST", Action.ACCEPT),
                             ("a@extra.test", Action.ACCEPT), ("a@partner.test", None), ("", None)]:
        assert rules.evaluate(facts(Stage.MAIL, sender=sender)).action is expected, sender
    assert rules.evaluate(facts(Stage.MAIL, sender="a@partner.example")).matches[0].reasons == (
        "sender.domain partner.example matches lists/partners.txt",)


def test_add_header_rule_may_also_test_headers(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "h"\naction = "add_header"\n'
                              'header = { name = "X-Outlook", value = "yes", X-Mailer = "*Outlook*" }\n')
    assert rules.evaluate(facts(message=view(headers=(("X-Mailer", "Microsoft Outlook 16"),)))).headers == (("X-Outlook", "yes"),)
    assert rules.evaluate(facts()).headers == ()


def test_disable_turns_a_shipped_rule_off_from_a_site_file(tmp_path: Path) -> None:
    (tmp_path / "00-shipped.toml").write_text('[[rule]]\nname = "enc"\nattachment.encrypted = true\naction = "reject"\n')
    (tmp_path / "90-local.toml").write_text('disable = ["enc"]\n')
    rules = load_ruleset(tmp_path)
    assert len(rules) == 0 and rules.evaluate(facts(message=view(part(encrypted=True)))).action is None


def test_fingerprint_follows_rule_and_list_contents(tmp_path: Path) -> None:
    text = '[[rule]]\nname = "p"\nstage = "mail"\nsender.domain = "@lists/p.txt"\naction = "accept"\n'
    first = ruleset(tmp_path, text, {"lists/p.txt": "a.test\n"}).fingerprint
    assert ruleset(tmp_path, text, {"lists/p.txt": "a.test\n"}).fingerprint == first
    assert ruleset(tmp_path, text, {"lists/p.txt": "b.test\n"}).fingerprint != first


def test_rule_without_conditions_always_matches_and_data_facts_need_a_message(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "all"\naction = "quarantine"\n')
    assert rules.evaluate(facts()).action is Action.QUARANTINE
    bare = facts()
    with pytest.raises(ValueError):
        rules.evaluate(type(bare)(Stage.DATA, bare.session, bare.envelope))


def test_explain_prints_one_line_per_match_and_the_decision(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "exe"\nattachment.extension = ["exe"]\naction = "reject"\n')
    lines = rules.evaluate(facts(message=view(part("2", name="a.exe")))).explain()
    assert lines == ("exe (reject, enforce) parts 2: attachment 2: attachment.extension exe matches exe",
                     "decision: reject by exe -> 554 5.7.1 Message rejected by policy")


def test_glob_character_classes_and_special_characters(tmp_path: Path) -> None:
    rules = ruleset(tmp_path, '[[rule]]\nname = "r"\nattachment.filename = ["report[0-9].x(ls)", "[!a]*.tmp"]\naction = "strip"\n')
    names = {"report7.x(ls)": True, "reportA.x(ls)": False, "b.tmp": True, "a.tmp": False}
    for name, hit in names.items():
        assert bool(rules.evaluate(facts(message=view(part(name=name)))).strip) is hit, name


def test_large_lists_and_many_rules_load_and_evaluate(tmp_path: Path) -> None:
    domains = "\n".join(f"d{i}.example" for i in range(100_000)) + "\n*.wild.example\n"
    rule_text = "".join(f'[[rule]]\nname = "r{i}"\nattachment.filename = "*.x{i}"\naction = "strip"\n' for i in range(1000))
    rule_text += '[[rule]]\nname = "big"\nstage = "mail"\nsender.domain = "@lists/big.txt"\naction = "accept"\n'
    rules = ruleset(tmp_path, rule_text, {"lists/big.txt": domains})
    assert len(rules) == 1001
    assert rules.evaluate(facts(Stage.MAIL, sender="a@d99999.example")).action is Action.ACCEPT
    assert rules.evaluate(facts(Stage.MAIL, sender="a@q.wild.example")).action is Action.ACCEPT
    assert rules.evaluate(facts(Stage.MAIL, sender="a@d100000.example")).action is None
    verdict = rules.evaluate(facts(message=view(part("2", name="f.x999"), part("3", name="f.pdf"))))
    assert [s.rule for s in verdict.strip] == ["r999"]


def test_refused_reload_error_is_a_rule_set_error(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError):
        ruleset(tmp_path, '[[rule]]\nname = "x"\naction = "reject"\nreply = "250 OK"\n')

"""The srl environment: actions run in the sandbox; bad rules, slow rules and unsafe code are reported, not raised."""

import socket
import threading

import pytest

from ml.srl.apply_rule import RuleError, apply
from ml.srl.environment import execute_actions
from ml.srl.trace import INITIAL_STATE, parse_step, render_step

NONE_EQ = {"rule": {"pattern": "$A == None"}, "fix": "$A is None"}
CODE = "def f(x, items):\n    if x == None:\n        return len(items)\n    return x\n"


def test_apply_fills_single_and_multiple_metavariables_with_unicode_before_them():
    code = 's = "héllo"\nprint(a,  b)\n'
    out, n = apply(code, "python", {"rule": {"pattern": "print($$$ARGS)"}, "fix": "log($$$ARGS)"})
    assert (out, n) == ('s = "héllo"\nlog(a,  b)\n', 1)  # the span keeps its own spacing
    with pytest.raises(RuleError):
        apply(code, "python", {"rule": {"patern": "x"}, "fix": ""})


def test_a_correct_action_executes_and_behaves_the_same():
    expected = CODE.replace("x == None", "x is None")
    (report,) = execute_actions([{"code": CODE, "language": "python", "action": NONE_EQ, "expected": expected}])
    assert report.status == "ok" and report.matches == 1 and report.parses and report.equals_expected
    assert report.behaviour == "same" and report.behaviour_cases > 0 and report.executed
    assert "-    if x == None:" in report.diff and "+    if x is None:" in report.diff


def test_a_rewrite_that_changes_behaviour_is_caught():
    action = {"rule": {"pattern": "len($X)"}, "fix": "len($X) + 1"}
    expected = CODE.replace("len(items)", "len(items) + 1")
    (report,) = execute_actions([{"code": CODE, "language": "python", "action": action, "expected": expected}])
    assert report.equals_expected and report.parses
    assert report.behaviour == "differs" and not report.executed


def test_wrong_output_broken_output_and_rejected_rules_are_reported():
    broken = {"rule": {"pattern": "$A == None"}, "fix": "$A is is None"}
    jobs = [
        {"code": CODE, "language": "python", "action": NONE_EQ, "expected": CODE},  # not the expected code
        {"code": CODE, "language": "python", "action": broken, "expected": CODE},
        {"code": CODE, "language": "python", "action": {"rule": {"bogus": 1}, "fix": ""}, "expected": CODE},
        {"code": "var a = 1;\nif (a == 2) { f(a); }\n", "language": "javascript",
         "action": {"rule": {"pattern": "$A == $B"}, "fix": "$A === $B"},
         "expected": "var a = 1;\nif (a === 2) { f(a); }\n"},
    ]
    wrong, unparsable, rejected, javascript = execute_actions(jobs)
    assert wrong.status == "ok" and not wrong.equals_expected and not wrong.executed
    assert unparsable.status == "ok" and not unparsable.parses and not unparsable.executed
    assert rejected.status == "rule_error" and rejected.error
    assert javascript.executed and javascript.behaviour == "not_checked"


def test_a_function_that_loops_is_judged_not_runnable_quickly():
    code = "def g(n):\n    while n == None or True:\n        pass\n"
    (report,) = execute_actions([{"code": code, "language": "python", "action": NONE_EQ,
                                  "expected": code.replace("n == None", "n is None")}])
    assert report.status == "ok" and report.equals_expected and report.behaviour == "not_runnable"
    assert report.seconds < 5


def test_a_sandbox_that_runs_out_of_time_is_counted_not_raised():
    reports = execute_actions([{"code": CODE, "language": "python", "action": NONE_EQ, "expected": CODE}] * 2,
                              timeout_s=0.01)
    assert [r.status for r in reports] == ["timeout", "timeout"]
    assert not any(r.executed for r in reports)


def test_code_under_test_cannot_reach_the_network():
    hits = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(3)
        port = server.getsockname()[1]

        def accept():
            try:
                hits.append(server.accept())
            except OSError:
                pass

        waiter = threading.Thread(target=accept)
        waiter.start()
        code = (f"def call(x):\n    import socket\n    if x == None:\n        return 0\n"
                f"    return socket.create_connection(('127.0.0.1', {port}), timeout=1).fileno()\n")
        (report,) = execute_actions([{"code": code, "language": "python", "action": NONE_EQ,
                                      "expected": code.replace("x == None", "x is None")}])
        waiter.join()
    assert report.executed and report.behaviour == "same"  # both versions raise the sandbox's PermissionError
    assert hits == []


def test_render_and_parse_round_trip():
    text = render_step("Use identity for None.", NONE_EQ, INITIAL_STATE)
    parsed = parse_step(text)
    assert parsed.ok and parsed.step.action == NONE_EQ and parsed.step.state == INITIAL_STATE
    for bad in (text.replace("<think>", ""), text + " trailing", text.replace("</action>", "</action>}"),
                text.replace('"fix":"$A is None"', '"fixed":"$A is None"'),
                text.replace("<state_update>", "<state_update><think>")):
        assert not parse_step(bad).ok, bad


def test_step_grammar_accepts_every_teacher_step_and_nothing_malformed():
    """Constrained decoding holds a step to ml.srl.trace.step_grammar: it must admit every well-formed step (each
    family's teacher step) and stop a broken one at the first wrong token."""
    import llguidance

    from ml.dsl.schema_grammar import matcher
    from ml.srl.families import FAMILIES
    from ml.srl.recipe import srl_tokenizer
    from ml.srl.teacher import programmatic_step
    from ml.srl.trace import step_grammar

    steps = [programmatic_step(f) for f in FAMILIES]
    tok = srl_tokenizer("tiny:qwen2", steps, 400)
    grammar = step_grammar()

    def accepted(text: str) -> bool:
        m = matcher(tok, grammar)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return bool(m.consume_tokens(ids)) and m.is_accepting() and not m.is_error()

    assert isinstance(llguidance.grammar_from("lark", grammar), str)
    assert all(accepted(s) for s in steps)
    good = steps[0]
    for bad in (good.replace("<think>", "", 1), good.replace('"fix"', '"fixed"'),
                good.replace("</think><action>", "</think> <action>"), good.replace('"next_focus"', '"focus"')):
        assert not accepted(bad), bad

"""The arithmetic task's difficulty knobs and dial (dsmath_jax.data.arithmetic: `distractors`, DIFFICULTY_LEVELS,
arithmetic_spec, ARITHMETIC_HEADROOM; issue 18), checked against an independent reader of the question text."""

import hashlib
import json
import operator
import re

import pytest

from dsmath_jax.data.arithmetic import (
    ARITHMETIC_HEADROOM,
    ARITHMETIC_TINY,
    DIFFICULTY_LEVELS,
    MAX_DISTRACTORS,
    arithmetic_spec,
    generate_problems,
    train_test_split,
)
from dsmath_jax.data.pipeline import chat_prompt
from dsmath_jax.data.tasks import arithmetic_split, load_problems, problem_spec
from dsmath_jax.data.tokenizers import train_sentencepiece
from dsmath_jax.rl.rewards import check_answer, step_correctness

# ------------------------------------------------------------------------------------- an independent reader
# What a reader knows: which names are "he" and which "she", and what the words for the operations mean.
PRONOUN = {"Tom": "he", "Sam": "he", "Ben": "he", "Max": "he", "Leo": "he",
           "Ann": "she", "Mia": "she", "Lily": "she", "Emma": "she", "Zoe": "she"}
TIMES = {"doubles": 2, "triples": 3, "quadruples": 4}
PARTS = {"half": 2, "a third": 3, "a quarter": 4, "a fifth": 5, "a sixth": 6, "a seventh": 7, "an eighth": 8,
         "a ninth": 9, "a tenth": 10}
PY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}
THING = r"(?:them|(?:his|her) (?P<own>\w+))"
ACTIONS = [  # (pattern of the action after the subject, operation); `n` the operand, `thing` what it is about
    (r"(?:buys|finds|gets) (?P<n>\d+) more(?: (?P<thing>\w+))?(?: from [A-Z]\w+)?", "+"),
    (r"(?:gives|loses|sells) (?P<n>\d+)(?: (?P<thing>\w+))?(?: to [A-Z]\w+)?", "-"),
    (rf"(?P<word>doubles|triples|quadruples) {THING}", "*"),
    (rf"multiplies {THING} by (?P<n>\d+)", "*"),
    (rf"keeps (?P<part>{'|'.join(PARTS)}) of {THING}", "/"),
]


def read_question(question: str) -> tuple[int, list[int], list[str]]:
    """(answer, intermediates, ignored sentences) of a question, from its text alone: the asked-about person
    and thing come from the last sentence; a sentence counts when its subject is that person (by name, or by
    their pronoun) and what it is about is that thing ("them" / no noun: the thing in hand)."""
    *sentences, ask = re.split(r"(?<=[.?]) ", question)
    m = re.fullmatch(r"How many (\w+) does ([A-Z]\w+) have (?:now|at the end)\?", ask)
    assert m, ask
    item, name = m.groups()
    pron = PRONOUN[name]
    x: int | None = None
    values: list[int] = []
    ignored: list[str] = []
    for s in sentences:
        m = re.fullmatch(r"(?:Then )?(?P<who>he|she|[A-Z]\w+) (?P<action>.+)\.", s)
        assert m, s
        who, action = m["who"], m["action"]
        me = who == name or who.lower() == pron
        owned = re.fullmatch(r"(?:also )?(?:has|buys|finds) (?P<n>\d+) (?P<thing>(?!more\b)\w+)", action)
        if me and owned and action.startswith("has") and owned["thing"] == item and x is None:
            x = int(owned["n"])  # "Tom has 7 apples.": the start
            continue
        if not me or (owned and owned["thing"] != item):
            ignored.append(s)  # someone else's things, or the person's other things
            continue
        read = [(a, op) for pattern, op in ACTIONS if (a := re.fullmatch(pattern, action))]
        assert len(read) == 1, f"cannot read {s!r} in {question!r}"
        a, op = read[0]
        thing = a.groupdict().get("thing") or a.groupdict().get("own")
        assert thing in (None, item), (s, question)
        b = TIMES[a["word"]] if a.groupdict().get("word") else PARTS[a["part"]] if op == "/" else int(a["n"])
        assert x is not None, f"an action before the start in {question!r}"
        if op == "/":
            assert x % b == 0, (s, x)
        x = PY_OPS[op](x, b)
        assert x >= 0, (s, question)
        values.append(x)
    assert x is not None and values, question
    return x, values, ignored


STEP = re.compile(r"^(?P<pron>He|She) (?P<phrase>[^:\n]+): (?P<a>\d+) (?P<op>[-+*/]) (?P<b>\d+) = (?P<c>\d+)\.$")


@pytest.mark.parametrize("level", sorted(DIFFICULTY_LEVELS))
def test_every_level_matches_an_independent_reading(level):
    knobs = DIFFICULTY_LEVELS[level]
    problems = generate_problems(400, seed=11, **knobs)
    for p in problems:
        answer, intermediates, ignored = read_question(p.question)
        assert str(answer) == p.answer and intermediates == p.intermediates, p.question
        assert ignored == p.distractors and len(ignored) == knobs.get("distractors", 0), p.question
        lines = p.response.split("\n")
        assert lines[-1] == f"The final answer is $\\boxed{{{answer}}}$." and check_answer(p.response, p.answer)
        assert len(lines) == p.num_steps + 1 and knobs.get("min_steps", 1) <= p.num_steps <= knobs["max_steps"]
        x = p.start
        for line, value in zip(lines[:-1], intermediates):
            m = STEP.match(line)
            assert m, line
            a, b, c = int(m["a"]), int(m["b"]), int(m["c"])
            assert a == x and c == value == PY_OPS[m["op"]](a, b), line
            assert m["op"] != "/" or a % b == 0, line
            clause = f"{m['pron'].lower()} {m['phrase']}."
            assert clause in p.question.replace(m["pron"], m["pron"].lower()), line  # the question's words
            assert c <= knobs["max_value"]
            x = c
        assert step_correctness(p.response, p) == [True] * p.num_steps
    # The distractors are there to fool a reader: some are about the asked-about thing, some about the person.
    if knobs.get("distractors"):
        item = {p.id: re.search(r"How many (\w+)", p.question)[1] for p in problems}
        name = {p.id: p.question.split()[0] for p in problems}
        same_thing = [d for p in problems for d in p.distractors if d.endswith(f" {item[p.id]}.")]
        same_person = [d for p in problems for d in p.distractors if d.startswith((name[p.id], "He also", "She also"))]
        assert len(same_thing) > 0.1 * len(problems) and len(same_person) > 0.1 * len(problems)


def test_step_correctness_flags_the_corrupted_step():
    knobs = DIFFICULTY_LEVELS[max(DIFFICULTY_LEVELS)]
    problems = [p for p in generate_problems(200, seed=5, **knobs) if p.num_steps >= 3][:30]
    assert len(problems) == 30
    for p in problems:
        for j in range(p.num_steps):
            lines = p.response.split("\n")
            lines[j] = re.sub(r"= \d+\.$", f"= {p.intermediates[j] + 7}.", lines[j])  # a wrong result, not carried on
            flags = step_correctness("\n".join(lines), p)
            assert flags == [k != j for k in range(p.num_steps)], (j, lines)
        # A distractor's number copied in as the operand of the first step, the error carried on to the end.
        number = int(re.search(r"\d+", p.distractors[0])[0])
        op, b = p.operations[0]
        if op in "+-" and number != b and p.start - number >= 0:
            wrong = PY_OPS[op](p.start, number)
            lines = p.response.split("\n")
            lines[0] = re.sub(r"\d+ = \d+\.$", f"{number} = {wrong}.", lines[0])
            x = wrong
            for k, (op_k, b_k) in enumerate(p.operations[1:], 1):
                y = PY_OPS[op_k](x, b_k)
                lines[k] = re.sub(r"\d+ ([-+*/]) \d+ = \d+\.$", rf"{x} \g<1> {b_k} = {y}.", lines[k])
                x = y
            flags = step_correctness("\n".join(lines), p)
            assert flags[0] is False and flags == [v == t for v, t in zip(
                [int(re.search(r"= (-?\d+)\.$", line)[1]) for line in lines[:-1]], p.intermediates)]


# ------------------------------------------------------------------------------- existing streams unchanged
def _digest(problems) -> str:
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.response, p.answer, p.start, p.operations, p.intermediates]).encode())
    return h.hexdigest()


def test_default_knobs_keep_the_existing_streams():
    # Digests computed with the code before the distractors knob existed.
    tiny = ARITHMETIC_TINY["knobs"]
    assert _digest(generate_problems(300, seed=0)) == (
        "17b655accd944d46e00e720af1b1093682b11b50ef20c0323bd3f9006d61e7a0")
    assert _digest(generate_problems(300, seed=0, **tiny)) == (
        "790e2ae32e561a17543ee8b9a4b4bdc78bc78ac2a978b3109582142cb58a7766")
    assert _digest(generate_problems(200, seed=7, max_factor=6, max_value=200, max_operand=30)) == (
        "c5c343b3029c91f6cb96d9fba8cad0aed02cfd91ae95d359a37174a560e7600c")
    train, test = train_test_split(500, 256, seed=0, **tiny)
    assert _digest(test + train) == "566e1cc035444d3e83033d95320ba563956ba622c10a4ed6edb8fe23dab1a80c"
    first = generate_problems(2, seed=0, **tiny)
    assert [p.question for p in first] == [
        "Ann has 9 pencils. She buys 9 more. Then she keeps half of them. How many pencils does Ann have at the end?",
        "Tom has 6 cards. He triples them. Then he finds 6 more. How many cards does Tom have at the end?"]
    assert first[0].response == ("She buys 9 more: 9 + 9 = 18.\nShe keeps half of them: 18 / 2 = 9.\n"
                                 "The final answer is $\\boxed{9}$.")
    assert generate_problems(50, seed=0, distractors=0, **tiny) == generate_problems(50, seed=0, **tiny)
    assert DIFFICULTY_LEVELS[0] == tiny  # level 0 is the tiny task's problems


def test_distractors_leave_the_problem_as_drawn():
    plain = generate_problems(200, seed=3, max_steps=4)
    noisy = generate_problems(200, seed=3, max_steps=4, distractors=3)
    for a, b in zip(plain, noisy):
        assert (a.start, a.operations, a.intermediates, a.answer, a.id) == (b.start, b.operations, b.intermediates,
                                                                           b.answer, b.id)
        assert a.question.split(". ")[0] == b.question.split(". ")[0]  # the start, first
        assert a.question.split(". ")[-1] == b.question.split(". ")[-1]  # the question asked, last
        assert len(b.distractors) == 3 and not a.distractors
        assert all(d in b.question and d not in a.question for d in b.distractors)
        assert b.sft_row().keys() == a.sft_row().keys()  # SFT rows keep their fields


def test_bad_knobs_are_named():
    for bad in (-1, MAX_DISTRACTORS + 1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="distractors"):
            generate_problems(1, distractors=bad)
        with pytest.raises(ValueError, match="distractors"):
            train_test_split(10, 10, distractors=bad)
    with pytest.raises(ValueError, match="max_steps"):
        generate_problems(1, max_steps=2.5)
    with pytest.raises(TypeError, match="unknown knobs"):
        train_test_split(10, 10, distractor=1)
    for bad in (-1, max(DIFFICULTY_LEVELS) + 1, "1", True):
        with pytest.raises(ValueError, match="difficulty level"):
            arithmetic_spec(bad)


def test_levels_go_through_the_task_specs():
    for level in DIFFICULTY_LEVELS:
        spec = arithmetic_spec(level, n_train=300, n_test=40, seed=2)
        assert spec.keys() == ARITHMETIC_TINY.keys() and problem_spec(spec) == spec
        train, test = arithmetic_split(spec)
        assert len(train) == 300 and len(test) == 40
        assert not {p.question for p in train} & {p.question for p in test}
        held_out = load_problems(spec, "test")
        assert [(q.question, q.answer, list(q.intermediates)) for q in held_out] == [
            (p.question, p.answer, p.intermediates) for p in test]
        assert all(len(p.distractors) == DIFFICULTY_LEVELS[level].get("distractors", 0) for p in train)
    # The chosen level is a level of the dial, as a spec of the tiny task's shape.
    assert ARITHMETIC_HEADROOM.keys() == ARITHMETIC_TINY.keys()
    assert ARITHMETIC_HEADROOM["knobs"] in DIFFICULTY_LEVELS.values()
    assert {k: v for k, v in ARITHMETIC_HEADROOM.items() if k != "knobs"} == {
        k: v for k, v in ARITHMETIC_TINY.items() if k != "knobs"}


def test_the_headroom_level_fits_the_tiny_budgets(tmp_path):
    """With a 512-piece tokenizer trained as the tiny SFT run trains its own (`question\nresponse` of 4,000 train
    problems): responses within 90 tokens (the tiny RL config samples 96); SFT examples within the tiny SFT
    config's 128-token sequences (129 tokens with the shifted target) but for a few, cut by a token or two."""
    knobs = ARITHMETIC_HEADROOM["knobs"]
    docs = [f"{p.question}\n{p.response}" for p in generate_problems(4000, seed=0, **knobs)]
    tok = train_sentencepiece(docs, tmp_path / "spm", vocab_size=512)
    problems = generate_problems(500, seed=1, **knobs)
    responses = [len(tok.encode(" " + p.response, add_eos=True)) for p in problems]
    examples = [len(tok.encode(chat_prompt(p.question), add_bos=True)) + r for p, r in zip(problems, responses)]
    assert max(responses) <= 90
    assert sum(n > 129 for n in examples) <= 0.02 * len(examples) and max(examples) <= 129 + 4


# ------------------------------------------------------------------------------------------------- the dial
def test_the_dial_only_ever_turns_up():
    """Each level's knobs are at least as hard as the level below on every knob, and harder on one."""
    harder = {"min_steps": 1, "max_steps": 1, "max_operand": 1, "max_value": 1, "max_factor": 1, "distractors": 1}
    defaults = {"min_steps": 1, "max_factor": 3, "distractors": 0}
    levels = sorted(DIFFICULTY_LEVELS)
    assert levels == list(range(len(levels)))
    for low, high in zip(levels, levels[1:]):
        a = {**defaults, **DIFFICULTY_LEVELS[low]}
        b = {**defaults, **DIFFICULTY_LEVELS[high]}
        assert set(a) <= set(harder) and set(b) <= set(harder), (low, high)
        assert all(b[k] >= a[k] for k in harder if k in a), (low, high)
        assert any(b[k] > a[k] for k in harder if k in a), (low, high)


@pytest.mark.slow  # trains a tiny policy for 450 steps, then 384 greedy answers: 3-8 minutes on 2 CPU cores
def test_the_dial_lowers_sft_accuracy(tmp_path):
    """One tiny policy SFT-trained on a mixture of levels 0, 2 and 4 answers their held-out problems less and
    less often (greedy), by a margin."""
    from conftest import load_config

    from dsmath_jax.generate import make_sampler
    from dsmath_jax.generate.sampler import SamplingParams
    from dsmath_jax.train.loop import train
    from dsmath_jax.train.restore import load_run

    levels = (0, 2, 4)
    specs = {lv: arithmetic_spec(lv, n_train=1300, n_test=128, seed=0) for lv in levels}  # 3,900: tokenizer docs
    config = load_config("configs/sft/arithmetic.py:tiny")
    config.data.sources = [dict(config.data.sources[0], sources=[
        {"kind": "arithmetic", "arithmetic": {k: v for k, v in specs[lv].items() if k != "kind"}} for lv in levels])]
    config.train.update(tensorboard=False, async_checkpoint=False, eval_every=0)  # the config's 450 steps
    train(config, str(tmp_path / "sft"), task="sft")
    model, tokenizer = load_run(str(tmp_path / "sft"))
    sampler = make_sampler("continuous", model, tokenizer, rows=128, max_len=192, chunk_size=16)
    tests = {lv: load_problems(specs[lv], "test") for lv in levels}
    problems = [p for lv in levels for p in tests[lv]]
    completions = sampler.generate([chat_prompt(p.question) for p in problems],
                                   SamplingParams(max_new_tokens=96, temperature=0.0))
    right = iter(check_answer(c[0].text, p.answer) for c, p in zip(completions, problems))
    accuracy = {lv: sum(next(right) for _ in tests[lv]) / len(tests[lv]) for lv in levels}
    print("greedy accuracy by level:", accuracy)
    # Seen: 0.36 / 0.24 / 0.07 (and 0.25 / 0.14 / 0.03 after 300 steps, 64 problems a level): margins of about
    # half the smallest gap seen (0.11).
    assert accuracy[0] >= accuracy[2] + 0.05 and accuracy[2] >= accuracy[4] + 0.05, accuracy

"""Generated arithmetic problems with worked solutions, in DeepSeek-V3.2's chat format.

Every problem is a question, a column-by-column working and an answer written GSM8K-style
(`#### N`). The working builds the result one digit at a time ("so far 85") so each step only
has to copy the previous partial result and put one new digit in front: a small model can
learn that, where writing a 3-digit sum in one go is much harder for it.

A problem is a pure function of its random generator, so a training batch is a pure function
of (seed, step) and an interrupted run resumes on exactly the data it would have seen.
"""

import random
from dataclasses import dataclass

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_START = "<think>"
THINK_END = "</think>"

OPS = ("add", "sub", "mul")
# Held-out problems are drawn from this seed; training skips any question in that set.
EVAL_SEED = 20261125


@dataclass(frozen=True)
class Problem:
    question: str
    working: str
    answer: int
    op: str
    digits: int  # digits of the longer operand
    word: bool

    def gsm8k_answer(self) -> str:
        """The worked solution in GSM8K's `answer` field format."""
        return f"{self.working}\n#### {self.answer}"


def number(rng: random.Random, digits: int) -> int:
    lo = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(lo, 10**digits - 1)


def column_add(a: int, b: int) -> tuple[list[str], int]:
    """Steps of a + b, units first, each ending in the partial result so far."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry, so_far = [], 0, ""
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        lhs = f"{x} + {y}" + (" + 1" if carry else "")
        carry = s // 10
        so_far = str(s % 10) + so_far
        steps.append(f"{lhs} = {s}" + (", carry 1" if carry else "") + f", so far {so_far}.")
    if carry:
        so_far = "1" + so_far
        steps.append(f"The carry makes {so_far}.")
    return steps, int(so_far)


def column_sub(a: int, b: int) -> list[str]:
    """Steps of a - b for a >= b, units first."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, borrow, so_far = [], 0, ""
    for i in range(len(da)):
        x = int(da[i])
        y = int(db[i]) if i < len(db) else 0
        lhs = f"{x} - {y}" + (" - 1" if borrow else "")
        d = x - y - borrow
        if d < 0:
            d += 10
            lhs_b = f"1{x} - {y}" + (" - 1" if borrow else "")
            so_far = str(d) + so_far
            steps.append(f"{lhs} < 0, borrow 1: {lhs_b} = {d}, so far {so_far}.")
            borrow = 1
        else:
            so_far = str(d) + so_far
            steps.append(f"{lhs} = {d}, so far {so_far}.")
            borrow = 0
    return steps


def column_mul_digit(a: int, d: int) -> tuple[list[str], int]:
    """Steps of a * d for one digit d, units first."""
    steps, carry, so_far = [], 0, ""
    for ch in str(a)[::-1]:
        x = int(ch)
        p = x * d + carry
        lhs = f"{x} * {d}" + (f" + {carry}" if carry else "")
        carry = p // 10
        so_far = str(p % 10) + so_far
        steps.append(f"{lhs} = {p}" + (f", carry {carry}" if carry else "") + f", so far {so_far}.")
    if carry:
        so_far = str(carry) + so_far
        steps.append(f"The carry makes {so_far}.")
    return steps, int(so_far)


def work_add(a: int, b: int) -> tuple[str, int]:
    steps, r = column_add(a, b)
    return " ".join(steps + [f"{a} + {b} = {r}."]), r


def work_sub(a: int, b: int) -> tuple[str, int]:
    if a >= b:
        r = a - b
        return " ".join(column_sub(a, b) + [f"{a} - {b} = {r}."]), r
    r = b - a
    head = f"{a} < {b}, so work out {b} - {a} and negate."
    return " ".join([head] + column_sub(b, a) + [f"{b} - {a} = {r}, so {a} - {b} = -{r}."]), -r


def work_mul(a: int, b: int) -> tuple[str, int]:
    parts, partials = [], []
    digits = str(b)[::-1]
    for i, ch in enumerate(digits):
        d = int(ch)
        steps, p = column_mul_digit(a, d)
        if len(digits) > 1:
            parts.append(f"{a} * {d}:")
        parts.extend(steps)
        shifted = p * 10**i
        if i:
            parts.append(f"Shift {i}: {shifted}.")
        partials.append(shifted)
    total = partials[0]
    for p in partials[1:]:
        parts.append(f"Add {total} + {p}:")
        steps, total = column_add(total, p)
        parts.extend(steps)
    parts.append(f"{a} * {b} = {total}.")
    return " ".join(parts), total


WORK = {"add": work_add, "sub": work_sub, "mul": work_mul}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}

PLAIN = {
    "add": ["What is {a} + {b}?", "Calculate {a} + {b}.", "What is {a} plus {b}?", "{a} + {b} = ?"],
    "sub": ["What is {a} - {b}?", "Calculate {a} - {b}.", "What is {a} minus {b}?", "{a} - {b} = ?"],
    "mul": ["What is {a} * {b}?", "Calculate {a} * {b}.", "What is {a} times {b}?", "{a} * {b} = ?"],
}
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ken", "Zoe", "Ravi", "Lena"]
ITEMS = ["apples", "books", "coins", "stamps", "pens", "cards", "shells", "marbles"]
WORDY = {
    "add": [
        "{n} has {a} {i}. {n} gets {b} more {i}. How many {i} does {n} have now?",
        "A shop sold {a} {i} in the morning and {b} {i} in the afternoon. How many {i} did it sell?",
    ],
    "sub": [
        "{n} has {a} {i} and gives away {b} of them. How many {i} does {n} have left?",
        "A box holds {a} {i}. {n} takes out {b}. How many {i} are still in the box?",
    ],
    "mul": [
        "{n} buys {a} bags with {b} {i} in each bag. How many {i} does {n} buy?",
        "There are {a} rows of {i} with {b} {i} in each row. How many {i} are there?",
    ],
}


def make_problem(rng: random.Random, op: str, da: int, db: int, word: bool) -> Problem:
    a, b = number(rng, da), number(rng, db)
    if rng.random() < 0.5 and op != "sub":
        a, b = b, a
    if word and op == "sub" and a < b:
        a, b = b, a
    if word:
        q = rng.choice(WORDY[op]).format(a=a, b=b, n=rng.choice(NAMES), i=rng.choice(ITEMS))
        lead = f"{a} {SYMBOL[op]} {b}. "
    else:
        q = rng.choice(PLAIN[op]).format(a=a, b=b)
        lead = ""
    working, r = WORK[op](a, b)
    return Problem(q, lead + working, r, op, max(len(str(a)), len(str(b))), word)


def problem_from(a: int, b: int, op: str) -> Problem:
    """The plain question "What is a op b?" with its working."""
    working, r = WORK[op](a, b)
    return Problem(PLAIN[op][0].format(a=a, b=b), working, r, op, max(len(str(a)), len(str(b))), False)


def sample_problem(rng: random.Random) -> Problem:
    """The training mixture: addition and subtraction of 1-4 digit numbers, multiplication of
    1-4 digit by 1-2 digit numbers (1-4 by 3-4 digits now and then), word problems."""
    u = rng.random()
    word = rng.random() < 0.15
    if u < 0.38:
        op = "add"
    elif u < 0.76:
        op = "sub"
    else:
        op = "mul"
    if word:
        da, db = rng.randint(1, 3), rng.randint(1, 2 if op == "mul" else 3)
    elif op == "mul":
        da = rng.randint(1, 4)
        db = rng.randint(1, 2) if rng.random() < 0.85 else rng.randint(1, 4)
    else:
        da, db = rng.randint(1, 4), rng.randint(1, 4)
    return make_problem(rng, op, da, db, word)


def sample_close_sub(rng: random.Random) -> Problem:
    """A subtraction whose operands have the same length, half the time sharing leading digits:
    the cases where deciding which operand is larger (the first step) is hardest."""
    d = rng.randint(1, 4)
    a = number(rng, d)
    if d > 1 and rng.random() < 0.5:
        keep = rng.randint(1, d - 1)
        b = int(str(a)[:keep] + str(number(rng, d - keep)).zfill(d - keep))
    else:
        b = number(rng, d)
    if rng.random() < 0.5:
        a, b = b, a
    return make_problem_from_operands(rng, "sub", a, b)


def make_problem_from_operands(rng: random.Random, op: str, a: int, b: int) -> Problem:
    q = rng.choice(PLAIN[op]).format(a=a, b=b)
    working, r = WORK[op](a, b)
    return Problem(q, working, r, op, max(len(str(a)), len(str(b))), False)


def eval_problems(n: int = 500) -> list[Problem]:
    """The held-out set: per operation and digit count (1-4) of the longer operand, plus word
    problems; deterministic."""
    rng = random.Random(EVAL_SEED)
    plan = []
    per = {"add": 40, "sub": 40, "mul": 25}
    for op in OPS:
        for d in range(1, 5):
            plan += [(op, d)] * per[op]
    words = n - len(plan)
    out, seen = [], set()
    for op, d in plan:
        while True:
            other = rng.randint(1, d if op != "mul" else min(d, 2))
            da, db = (d, other) if rng.random() < 0.5 else (other, d)
            p = make_problem(rng, op, da, db, word=False)
            if p.question not in seen and p.digits == d:
                break
        seen.add(p.question)
        out.append(p)
    for k in range(words):
        op = OPS[k % 3]
        while True:
            p = make_problem(rng, op, rng.randint(1, 3), rng.randint(1, 2 if op == "mul" else 3), word=True)
            if p.question not in seen:
                break
        seen.add(p.question)
        out.append(p)
    return out


def prompt_text(question: str, thinking: bool) -> str:
    """What the engine renders for one user message (DeepSeek-V3.2's encoding)."""
    return f"{BOS}{USER}{question}{ASSISTANT}{THINK_START if thinking else THINK_END}"


def reply_text(p: Problem, thinking: bool) -> str:
    """The model's reply: the working inside the think block and a short answer after it, or,
    in chat mode, the whole GSM8K-style solution as the answer."""
    if thinking:
        return f"{p.working}{THINK_END}The answer is {p.answer}.\n#### {p.answer}{EOS}"
    return f"{p.gsm8k_answer()}{EOS}"


def category(p: Problem) -> str:
    return f"word-{p.op}" if p.word else f"{p.op}-{p.digits}d"


def heldout_jsonl(problems: list[Problem]) -> str:
    """GSM8K's test.jsonl format (question, answer ending in `#### N`) plus a category, for
    `flashseek bench accuracy`."""
    import json

    rows = [{"question": p.question, "answer": p.gsm8k_answer(), "category": category(p)} for p in problems]
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

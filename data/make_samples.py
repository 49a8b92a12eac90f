"""Generate deterministic sample data for the sales-roleplay chatbot.

The bot always plays the prospect/customer; the user is the sales rep practising. The phrase banks
(names, industries, products, objections, replies, tones, rep lines, situations, personas) are data, in
phrases/*.yaml beside this script; this script draws scenarios and combines them. Writes, next to this script:
  training.jsonl               {"input": rep line, "output": prospect reply} per line
  training.json                the same records as one JSON list
  roleplay_conversations.jsonl {"messages": [system persona, user/assistant turns...]}
  scenarios.yaml               the first conversations' personas, for `train.py chat/web --scenarios`

Run from the repo root: python data/make_samples.py
"""

import json
import random
import string
from pathlib import Path

import yaml

SEED = 20240611
N_PAIRS = 360
N_CONVERSATIONS = 130
ASSISTANT_FIRST_SHARE = 0.2
N_SCENARIOS = 6
OUT_DIR = Path(__file__).resolve().parent
PHRASES_DIR = OUT_DIR / "phrases"
NO_FOLLOW_UP = ("busy", "send_email")  # replies to these handles grant time; don't pile on an objection
STACKABLE = ["price", "timing", "competitor", "authority", "contract", "security", "implementation"]
STATE_SITUATION_SHARE = 0.7  # how often the prospect states its persona's situation when it raises that objection


def load_phrases(folder):
    """The phrase banks (names, objections, replies, situations, personas...) from the YAML files in `folder`.

    They are data, kept apart from the code that combines them; each file maps bank names to banks.
    """
    phrases = {}
    for path in sorted(folder.glob("*.yaml")):
        banks = yaml.safe_load(path.read_text(encoding="utf-8"))
        clash = phrases.keys() & banks.keys()
        if clash:
            raise SystemExit(f"error: {path} defines {sorted(clash)} again; each phrase bank lives in one file")
        phrases.update(banks)
    return phrases


PHRASES = load_phrases(PHRASES_DIR)


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

_FORMATTER = string.Formatter()


def fields(template):
    """Return the set of slot names used by a template."""
    return {name for _, name, _, _ in _FORMATTER.parse(template) if name}


def lower_first(text):
    """Lowercase the first letter so text can follow a lead-in, unless it starts with I or a slot."""
    first_word = text.split(" ", 1)[0].rstrip(",.?")
    if text.startswith("{") or first_word in ("I", "I'm", "I'd", "I've", "I'll"):
        return text
    return text[0].lower() + text[1:]


def connect(rng, connectors, template):
    """Prefix a template with a connector, avoiding a second "but" when the template already has one."""
    if ", but" in template:
        connectors = [c for c in connectors if "but" not in c.lower()]
    return rng.choice(connectors) + lower_first(template)


def pick(rng, templates, scenario, used):
    """Choose an unused template whose slots the scenario can fill, mark it used, and return it unfilled."""
    choice = rng.choice([t for t in templates if fields(t) <= scenario["available"] and t not in used])
    used.add(choice)
    return choice


def fill(template, scenario):
    """Fill a template's slots from the scenario."""
    return template.format(**scenario)


def second_person(phrase):
    """Turn a prospect-voice phrase like "our ERP" into the rep's "your ERP"."""
    return "your " + phrase[4:] if phrase.startswith("our ") else phrase


def money(amount):
    """Format a dollar amount like $12,600."""
    return f"${amount:,}"


def make_scenario(rng):
    """Draw a persona, company, product and all slot values for one record or conversation."""
    product = rng.choice(PHRASES["products"])
    industries = [i for i in PHRASES["industries"]
                  if product["industries"] is None or i["name"] in product["industries"]]
    industry = rng.choice(industries)
    company_noun, suffix = rng.choice(industry["companies"])
    title = rng.choice(industry["titles"])
    size = rng.choice(PHRASES["company_sizes"])
    units, per_phrase, low, high, ratio = product["unit"]
    seats = max(2, round(size * ratio))
    step = 1 if high <= 20 else 5
    unit_price = rng.randrange(low, high + 1, step)
    sc = dict(
        first=rng.choice(PHRASES["first_names"]), last=rng.choice(PHRASES["last_names"]), title=title,
        company=f"{rng.choice(PHRASES['company_stems'])} {suffix}", company_noun=company_noun,
        a_company_noun=("an " if company_noun[0] in "aeiou" else "a ") + company_noun,
        small_size=size if size < 100 else None,
        sector=industry["sector"], industry_plural=industry["plural"], size=size,
        location=rng.choice(PHRASES["locations"]), region=rng.choice(PHRASES["locations"]),
        busy=industry["busy"], rule=industry["rule"], data=industry["data"],
        boss=rng.choice(industry["bosses"]), committee=rng.choice(PHRASES["committees"]),
        amount=rng.choice(PHRASES["approval_amounts"]),
        product_long=product["long"], topic=product["topic"],
        vendor=rng.choice(PHRASES["vendors"]), rep=rng.choice(PHRASES["rep_names"]),
        competitor=rng.choice(product["competitors"]),
        users=product["users"], system=rng.choice(product["systems"]) if product["systems"] else None,
        process=product["process"],
        pain=product["pain"], benefit=product["benefit"], result=product["result"],
        units=units, unit_noun=units[:-1], seats=seats,
        price=f"{money(unit_price)} {per_phrase}",
        low_price=f"{money(max(low // 2, 1))} {per_phrase}",
        annual=money(unit_price * seats * 12),
        month=rng.choice(PHRASES["months"]), quarter=rng.choice(PHRASES["quarters"]),
        weekday=rng.choice(PHRASES["weekdays"]), tenure=rng.choice(PHRASES["tenures"]),
        years=rng.choice(PHRASES["years"]), contract_years=rng.choice(PHRASES["contract_years"]),
        rollout_weeks=rng.choice(PHRASES["rollout_weeks"]), project=rng.choice(PHRASES["projects"]),
        trigger=rng.choice(PHRASES["triggers"]),
        tone=rng.choice(list(PHRASES["tone_descriptions"])),
        vendor_kind=product["vendor_kind"],
        objection_types=[k for k in PHRASES["objections"] if k not in product["skip"] and k != "busy"],
    )
    for key in ("busy", "system", "committee"):
        sc["your_" + key] = second_person(sc[key]) if sc[key] else None
    sc["available"] = {k for k, v in sc.items() if v is not None}
    return sc


def decorate(rng, sc, text, mode):
    """Add tone colour to a prospect line.

    mode "objection": opener or lead-in, maybe a closer; "bridged": maybe a closer only;
    "question": maybe an opener.
    """
    tone = sc["tone"]
    roll = rng.random()
    if mode in ("objection", "question") and roll < 0.28:
        text = rng.choice(PHRASES["tone_openers"][tone]) + " " + text
    elif mode == "objection" and roll < 0.45:
        text = rng.choice(PHRASES["tone_lead_ins"][tone]) + lower_first(text)
    if mode in ("objection", "bridged") and rng.random() < 0.25:
        text += " " + rng.choice(PHRASES["tone_closers"][tone])
    return text


# --------------------------------------------------------------------------
# Line builders (templates are assembled first and filled last, so lower_first never sees a filled slot)
# --------------------------------------------------------------------------

def objection(rng, sc, kind, used):
    """An unfilled objection of `kind`: often, for a trait of the persona, its situation in the prospect's words."""
    said = sc.get("own_words", {}).get(kind)
    if said and said not in used and rng.random() < STATE_SITUATION_SHARE:
        used.add(said)
        return said
    return pick(rng, PHRASES["objections"][kind], sc, used)


def objection_line(rng, sc, kind, used, bridge=False, stack=False):
    """A prospect objection of `kind`, optionally bridged from the rep's last point and stacked with a second."""
    text = objection(rng, sc, kind, used)
    if bridge:
        text = connect(rng, PHRASES["bridges"], text)
    if stack:
        second = rng.choice([k for k in STACKABLE if k != kind and k in sc["objection_types"]])
        text += " " + connect(rng, PHRASES["stackers"], pick(rng, PHRASES["objections"][second], sc, used))
    return fill(decorate(rng, sc, text, "bridged" if bridge else "objection"), sc)


def handle_line(rng, sc, kind, used):
    """The rep's response to an objection of `kind`, plus the prospect replies that fit it."""
    options = [h for h in PHRASES["handles"][kind] if fields(h[0]) <= sc["available"] and h[0] not in used]
    template, replies = rng.choice(options)
    used.add(template)
    return fill(address(rng, template), sc), replies


def reply_line(rng, sc, replies, used, next_kind=None, statements_only=False):
    """The prospect answering the rep's handling line, optionally moving on to another objection.

    statements_only avoids replies that end in a question the rep's next line would not answer;
    a reply followed by another objection is always a statement.
    """
    if statements_only or next_kind:
        replies = [r for r in replies if not r.endswith("?")]
    text = pick(rng, replies, sc, used)
    if next_kind:
        text += " " + connect(rng, PHRASES["after_reply"], objection(rng, sc, next_kind, used))
    return fill(text, sc)


def question_topics(sc, traits):
    """Question topics the prospect can ask about, given the scenario and persona traits."""
    topics = [t for t in PHRASES["questions"] if any(fields(q) <= sc["available"] for q in PHRASES["questions"][t])]
    if not {"competitor", "contract"} & set(traits):
        topics.remove("difference")
    return topics


def opens_with_question(template):
    """True if the template's first sentence is a question."""
    ends = [i for i in (template.find("."), template.find("?")) if i != -1]
    return bool(ends) and min(ends) == template.find("?")


def question_line(rng, sc, topic, used, bridge=False):
    """A prospect question about `topic`; bridged questions must open with the question itself."""
    templates = PHRASES["questions"][topic]
    if bridge:
        templates = [q for q in templates if opens_with_question(q)]
    text = pick(rng, templates, sc, used)
    if bridge:
        text = connect(rng, PHRASES["bridges"], text)
    return fill(decorate(rng, sc, text, "bridged" if bridge else "question"), sc)


def discovery_exchange(rng, sc, traits, used):
    """A rep discovery question and the prospect's answer template (unfilled).

    Answers stay consistent with whether the persona uses a competitor.
    """
    group = rng.choice([g for g in PHRASES["discovery"] if g not in used])
    used.add(group)
    questions, answers = PHRASES["discovery"][group]
    uses_competitor = bool({"competitor", "contract"} & set(traits))
    answers = [a for a in answers if ("{competitor}" in a) == uses_competitor or "{competitor}" not in a]
    return rep_line(rng, sc, questions, used, named=True), pick(rng, answers, sc, used)


def simple_line(rng, sc, templates, used):
    """A plain prospect line from `templates`."""
    return fill(pick(rng, templates, sc, used), sc)


def final_line(rng, sc, used):
    """How the prospect ends the call after the rep asks for a next step."""
    weights = {"friendly": (5, 2, 2, 1), "analytical": (4, 3, 2, 1), "busy": (2, 4, 3, 1),
               "skeptical": (3, 2, 3, 2), "irritated": (1, 2, 3, 4)}[sc["tone"]]
    pools = [PHRASES["agree"], PHRASES["objections"]["send_email"], PHRASES["defer"], PHRASES["decline"]]
    pool = rng.choices(pools, weights=weights)[0]
    return simple_line(rng, sc, pool, used)


def address(rng, template):
    """Sometimes have the rep open a line template with the prospect's first name."""
    if rng.random() < 0.2 and not template.startswith("{first}"):
        return "{first}, " + lower_first(template)
    return template


def rep_line(rng, sc, templates, used, named=False):
    """A sales rep line from `templates`, optionally opening with the prospect's name."""
    template = pick(rng, templates, sc, used)
    return fill(address(rng, template) if named else template, sc)


# --------------------------------------------------------------------------
# Training pairs
# --------------------------------------------------------------------------

def make_pair(rng):
    """One {"input", "output"} record: a rep line and a fitting prospect reply."""
    sc = make_scenario(rng)
    used = set()
    kinds = sc["objection_types"]
    topics = question_topics(sc, ["competitor"])
    move = rng.choices(["opener", "handle", "discovery", "answer", "close"], weights=[25, 35, 12, 15, 13])[0]

    if move == "opener":
        rep = rep_line(rng, sc, PHRASES["openers"] + PHRASES["cold_check_openers"], used)
        roll = rng.random()
        if roll < 0.7:
            bot = objection_line(rng, sc, rng.choice(kinds), used, stack=rng.random() < 0.2)
        elif roll < 0.85:
            bot = objection_line(rng, sc, "busy", used)
        else:
            bot = question_line(rng, sc, rng.choice(topics), used)
    elif move == "handle":
        handled = rng.choice(kinds + ["busy"])
        rep, replies = handle_line(rng, sc, handled, used)
        moves_on = handled not in NO_FOLLOW_UP and rng.random() < 0.3
        next_kind = rng.choice([k for k in kinds if k != handled]) if moves_on else None
        bot = reply_line(rng, sc, replies, used, next_kind)
    elif move == "discovery":
        rep, answer = discovery_exchange(rng, sc, rng.choice([[], ["competitor"]]), used)
        bot = fill(answer, sc)
    elif move == "answer":
        topic = rng.choice(topics)
        rep = rep_line(rng, sc, PHRASES["answers"][topic], used)
        roll = rng.random()
        if roll < 0.35:
            bot = simple_line(rng, sc, PHRASES["soft_positive"], used)
        elif roll < 0.6:
            bot = question_line(rng, sc, rng.choice([t for t in topics if t != topic]), used, bridge=True)
        elif roll < 0.85:
            bot = objection_line(rng, sc, rng.choice(kinds), used, bridge=True)
        else:
            bot = simple_line(rng, sc, PHRASES["agree"], used)
    else:
        rep = rep_line(rng, sc, PHRASES["closes"], used, named=True)
        bot = final_line(rng, sc, used)
    return {"input": rep, "output": bot}


def make_pairs(rng, n):
    """n pairs with no repeated input and no repeated output."""
    pairs, inputs, outputs = [], set(), set()
    while len(pairs) < n:
        pair = make_pair(rng)
        if pair["input"] in inputs or pair["output"] in outputs:
            continue
        inputs.add(pair["input"])
        outputs.add(pair["output"])
        pairs.append(pair)
    return pairs


# --------------------------------------------------------------------------
# Conversations
# --------------------------------------------------------------------------

def pick_traits(rng, sc):
    """One to three objection types that define the persona's situation, kept mutually consistent."""
    traits = rng.sample(sc["objection_types"], rng.choice([1, 2, 2, 3]))
    if "no_need" in traits:
        traits = [t for t in traits if t not in ("competitor", "contract")]
    return traits


def persona_prompt(rng, sc, traits):
    """The system message describing who the bot plays; sc["own_words"] keeps each trait's situation as the
    prospect would say it."""
    chosen = {t: rng.choice(PHRASES["situations"][t]) for t in traits}
    sc["own_words"] = {t: said for t, (_, said) in chosen.items()}
    situation = " ".join(fill(persona, sc) for persona, _ in chosen.values())
    template = rng.choice(PHRASES["persona_templates"])
    return template.format(situation=situation, tone_desc=PHRASES["tone_descriptions"][sc["tone"]], **sc)


def make_conversation(rng, assistant_first):
    """One roleplay conversation: system persona, then alternating turns ending with the prospect.

    The rep's move depends on the prospect's last line (handle an objection, answer a question,
    otherwise ask a discovery question); in longer calls, if nothing is left unanswered, the rep's
    last turn asks for a next step.
    The prospect works through the persona's objections in order, then asks questions or warms up.
    """
    sc = make_scenario(rng)
    traits = pick_traits(rng, sc)
    pending = list(traits)
    topics = question_topics(sc, traits)
    n_turns = rng.choice([3, 5, 7, 9, 11] if assistant_first else [4, 6, 8, 10, 12])
    roles = ["assistant", "user"] if assistant_first else ["user", "assistant"]
    used = set()
    messages = [{"role": "system", "content": persona_prompt(rng, sc, traits)}]
    bot_move, bot_key = None, None  # the prospect's last move and its objection kind or question topic
    rep_move, replies, answer = None, None, None

    for i in range(n_turns):
        role = roles[i % 2]
        if role == "user":
            if rep_move is None:
                openers = PHRASES["openers"] if assistant_first else PHRASES["openers"] + PHRASES["cold_check_openers"]
                text, rep_move = rep_line(rng, sc, openers, used), "opener"
            elif n_turns - i == 2 and n_turns >= 6 and bot_move not in ("objection", "question"):
                text, rep_move = rep_line(rng, sc, PHRASES["closes"], used, named=True), "close"
            elif bot_move == "objection":
                (text, replies), rep_move = handle_line(rng, sc, bot_key, used), "handle"
            elif bot_move == "question":
                text, rep_move = rep_line(rng, sc, PHRASES["answers"][bot_key], used), "answer"
            else:
                (text, answer), rep_move = discovery_exchange(rng, sc, traits, used), "discovery"
        elif i == 0:
            text, bot_move = fill(rng.choice(PHRASES["phone_answers"]), sc), "phone"
        elif rep_move == "close":
            text, bot_move = final_line(rng, sc, used), "final"
        elif rep_move == "handle":
            moves_on = pending and bot_key not in NO_FOLLOW_UP and rng.random() < 0.7
            next_kind = pending.pop(0) if moves_on else None
            text = reply_line(rng, sc, replies, used, next_kind, statements_only=True)
            bot_move, bot_key = ("objection", next_kind) if next_kind else ("reply", None)
        elif rep_move == "discovery":
            bot_move = "discovery"
            if pending and rng.random() < 0.5:
                bot_move, bot_key = "objection", pending.pop(0)
                answer += " " + connect(rng, PHRASES["after_reply"], objection(rng, sc, bot_key, used))
            text = fill(answer, sc)
        elif pending and not (rep_move == "opener" and rng.random() < 0.15):
            bot_move, bot_key = "objection", pending.pop(0)
            text = objection_line(rng, sc, bot_key, used, bridge=rep_move != "opener")
        elif rep_move == "opener":
            text, bot_move, bot_key = objection_line(rng, sc, "busy", used), "objection", "busy"
        elif topics and rng.random() < 0.6:
            bot_move, bot_key = "question", topics.pop(rng.randrange(len(topics)))
            text = question_line(rng, sc, bot_key, used, bridge=True)
        else:
            text, bot_move = simple_line(rng, sc, PHRASES["soft_positive"], used), "positive"
        messages.append({"role": role, "content": text})
    return {"messages": messages}, f"{sc['first']} {sc['last']}, {sc['title']} at {sc['company']}"


def make_conversations(rng, n):
    """n distinct conversations, ASSISTANT_FIRST_SHARE of them opened by the prospect, and their personas' names."""
    assistant_first = set(rng.sample(range(n), round(n * ASSISTANT_FIRST_SHARE)))
    conversations, names, seen = [], [], set()
    while len(conversations) < n:
        conv, name = make_conversation(rng, len(conversations) in assistant_first)
        key = json.dumps(conv, sort_keys=True)
        if key not in seen:
            seen.add(key)
            conversations.append(conv)
            names.append(name)
    return conversations, names


# --------------------------------------------------------------------------
# Validation and output
# --------------------------------------------------------------------------

def write_scenarios(path, conversations, names):
    """The first N_SCENARIOS personas as `train.py chat/web --scenarios` reads them: a YAML list of {name, system}."""
    entries = [{"name": name, "system": conv["messages"][0]["content"]}
               for conv, name in zip(conversations[:N_SCENARIOS], names)]
    with open(path, "w", encoding="ascii", newline="\n") as f:
        f.write("# Personas for `train.py chat --scenarios` and `train.py web --scenarios`: a name and the system "
                "prompt\n# the model plays. Written by data/make_samples.py from data/roleplay_conversations.jsonl.\n")
        yaml.safe_dump(entries, f, sort_keys=False, width=105)


def require_unique(values, label):
    """Raise ValueError if any value repeats."""
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {label} found")


def validate(pairs, conversations):
    """Check the invariants promised by the data format before anything is written."""
    require_unique([p["input"] for p in pairs], "training input")
    require_unique([p["output"] for p in pairs], "training output")
    require_unique([json.dumps(c, sort_keys=True) for c in conversations], "conversation")
    texts = [t for p in pairs for t in p.values()]
    texts += [m["content"] for c in conversations for m in c["messages"]]
    if not all(t.isascii() and "{" not in t and "}" not in t for t in texts):
        raise ValueError("non-ASCII text or unfilled slot found")
    for conv in conversations:
        system, *turns = conv["messages"]
        roles = [m["role"] for m in turns]
        if system["role"] != "system" or not 3 <= len(turns) <= 12 or roles[-1] != "assistant":
            raise ValueError("bad conversation shape")
        if any(a == b for a, b in zip(roles, roles[1:])) or "system" in roles:
            raise ValueError("conversation roles do not alternate")


def write_jsonl(path, records):
    """Write one compact JSON object per line."""
    with open(path, "w", encoding="ascii", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def main():
    rng = random.Random(SEED)
    pairs = make_pairs(rng, N_PAIRS)
    conversations, names = make_conversations(rng, N_CONVERSATIONS)
    validate(pairs, conversations)
    write_jsonl(OUT_DIR / "training.jsonl", pairs)
    with open(OUT_DIR / "training.json", "w", encoding="ascii", newline="\n") as f:
        json.dump(pairs, f, indent=1)
        f.write("\n")
    write_jsonl(OUT_DIR / "roleplay_conversations.jsonl", conversations)
    write_scenarios(OUT_DIR / "scenarios.yaml", conversations, names)
    print(f"wrote {len(pairs)} training pairs and {len(conversations)} conversations to {OUT_DIR}")


if __name__ == "__main__":
    main()

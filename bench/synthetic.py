"""Synthetic sales-roleplay records for throughput benchmarks (stdlib only).

generate_pairs() lazily yields {"input": rep text, "output": prospect text} records whose word
counts follow clipped log-normal distributions:
  inputs  15-300 words (about 20-400 tokens), median about 90 words
  outputs  8-190 words (about 10-250 tokens), median about 38 words
Text is built by concatenating sales-roleplay sentences drawn from a pool that is created once
with a fixed seed; the per-call seed only drives which sentences and lengths are drawn.

CLI: python bench/synthetic.py --n 1000 --seed 0 --out path.jsonl
"""

import argparse
import functools
import json
import math
import random
import string
import sys
from collections.abc import Iterator

# (min words, max words, median words, log-normal sigma)
INPUT_WORDS = (15, 300, 90, 0.55)
OUTPUT_WORDS = (8, 190, 38, 0.6)
MAX_SENTENCE_WORDS = 20  # longest sentence kept in the pool; every length 1..this must exist
VARIANTS_PER_TEMPLATE = 40  # filled variants drawn per template, so templates are evenly represented
POOL_SEED = 1234

SLOTS = {
    "name": ["Dana", "Marcus", "Priya", "Tom", "Elena", "Jamal", "Grace", "Victor", "Aisha", "Ben",
             "Rosa", "Kevin", "Mei", "Frank", "Olivia", "Raj"],
    "rep": ["Jordan", "Alex", "Taylor", "Chris", "Morgan", "Sam", "Riley", "Casey"],
    "vendor": ["Brightline", "Northpeak", "Clearpath", "Bluefin", "Trellis", "Meridian", "Kestrel"],
    "product": ["CRM", "payroll platform", "security service", "telematics system", "copier lease",
                "cloud hosting plan", "phone system", "scheduling app", "training platform",
                "e-signature tool", "benefits plan", "marketing retainer"],
    "competitor": ["Pipewell", "DealStream", "Payvance", "ShieldPoint", "FleetSight", "Copyline",
                   "NimbusHost", "RingLane", "Rosterly", "SignStack"],
    "industry": ["logistics companies", "dental groups", "software companies", "manufacturers",
                 "retailers", "contractors", "school districts", "credit unions", "hotel groups",
                 "law firms", "property managers", "farms", "nonprofits", "dealerships"],
    "month": ["January", "March", "April", "June", "August", "September", "October", "November"],
    "quarter": ["Q2", "Q3", "Q4", "the new fiscal year"],
    "weekday": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"],
    "boss": ["CFO", "owner", "board", "managing partner", "COO", "superintendent", "regional VP"],
    "count": ["twelve", "forty", "sixty", "ninety", "two hundred", "five hundred"],
    "pct": ["ten", "fifteen", "twenty", "thirty", "forty"],
    "price": ["$12 per user a month", "$45 per seat a month", "$300 a month", "$2,000 a year",
              "$18 per device a month", "$1,500 a month"],
    "pain": ["missed follow-ups", "payroll errors", "phishing emails", "late invoices", "missed calls",
             "last-minute call-outs", "downtime on the old server", "paperwork that never gets signed"],
}

REP_SENTENCES = [
    "Hi {name}, this is {rep} with {vendor}.",
    "Do you have a quick minute?",
    "I'll keep this short because I know you're busy.",
    "We help {industry} spend about {pct} percent less time dealing with {pain}.",
    "I noticed you're hiring, so I figured {pain} might be on your mind.",
    "Our {product} usually pays for itself within the first six months.",
    "Most of our customers came to us from {competitor}.",
    "Can I ask how you're handling that today?",
    "What's the biggest headache with your current setup?",
    "I understand the budget is tight until {quarter}.",
    "What if we started with a small pilot for one team?",
    "We handle the data migration, so your team doesn't have to.",
    "It works alongside the tools you already use.",
    "We're SOC 2 certified and everything is encrypted.",
    "Pricing starts at {price}, with no setup fee.",
    "Would it help if I put together a quick ROI estimate?",
    "Could we get your {boss} on a short call next week?",
    "How about fifteen minutes on {weekday} to walk through it?",
    "I can send over a one-page summary today.",
    "A company about your size got {pct} percent faster in the first quarter.",
    "When does your contract with {competitor} come up for renewal?",
    "Totally fair, and I don't want to waste your time.",
    "Out of curiosity, how many people would actually use it?",
    "We have about {count} customers in your area.",
    "Onboarding usually takes a few weeks, and you get a dedicated specialist.",
    "That's a common concern, and honestly it's a good one.",
    "If it doesn't work out, you can cancel after the first ninety days.",
    "I'll follow up on {weekday} unless you tell me otherwise.",
    "Got it.",
    "Sure.",
    "Makes sense.",
    "Fair enough, {name}.",
    "I hear you on that.",
    "That's helpful, thank you.",
    "Let me ask you one more question.",
    "Does that sound reasonable to you?",
    "So what would the next step look like on your end?",
    "We've seen a lot of {industry} struggle with {pain} as they grow past {count} people.",
    "Our {product} replaces a lot of manual work with something your team can run in an afternoon.",
    "Most {industry} we talk to tell us they lose a few hours every single week to {pain}.",
    "If I could show you a way to cut {pain} by {pct} percent, would that be worth fifteen minutes?",
    "I understand, and a lot of our best customers said exactly the same thing when we first spoke.",
    "We already work with {count} {industry}, so we've seen most of the problems you're describing.",
    "The reason I'm calling is that {industry} in your area keep telling us about {pain}.",
]

PROSPECT_SENTENCES = [
    "Hello, this is {name}.",
    "I've only got a minute.",
    "We already use {competitor} and it works fine.",
    "Honestly, the price is the problem.",
    "Our budget is frozen until {quarter}.",
    "I'd have to run it by our {boss}.",
    "We're locked into a contract until {month}.",
    "Just send me an email.",
    "We tried something like this before and it was a disaster.",
    "Where is our data stored?",
    "My team is already stretched thin.",
    "Who does the setup work, you or us?",
    "What does it cost for about {count} people?",
    "Is there a free trial?",
    "How is this different from {competitor}?",
    "That's more than we spend on it today.",
    "Call me back after {month}.",
    "Okay, that's fair.",
    "Not interested, thanks.",
    "Fine, send me an invite for {weekday}.",
    "Our biggest headache right now is {pain}.",
    "Nobody here has time to learn another system.",
    "I'm not the one who makes that call.",
    "What kind of support do you offer?",
    "Anything over {price} needs approval from our {boss}.",
    "Honestly, I don't see the need.",
    "Do you have a case study from one of the {industry} you work with?",
    "No.",
    "Okay.",
    "Hm, maybe.",
    "I'm listening.",
    "That's a fair point.",
    "Go on.",
    "Look, I get a lot of these calls.",
    "If it doesn't pay for itself inside a year, it's a no.",
    "We switched vendors once and lost a month of records in the move.",
    "Our {boss} picked {competitor} personally, so I'm not going to be the one who suggests replacing it.",
    "I'd need it in writing, including every fee, before I take it to anyone here.",
    "We looked at {competitor} last year and it came in way over what we could spend.",
    "I don't have the bandwidth for a new {product} right now, so call me back in {month}.",
    "Even if I liked it, I'd need buy-in from finance and IT, which is at least two more meetings.",
    "Our {boss} would have to sign off, and honestly that's not an easy sell this year.",
    "We're heading into our busy season and nobody here has time to think about a new {product}.",
    "Send me something in writing with the full price, and I'll look at it when I get a chance.",
    "The last vendor promised us the moon and then disappeared after the contract was signed.",
    "What would your {product} cost us for about {count} people, including setup and support?",
    "We've been doing it this way with {competitor} for years, and I don't see a good reason to change now.",
    "I'm happy to take a look, but realistically nothing gets approved here until {quarter}, and even then "
    "it's a maybe.",
]

_FORMATTER = string.Formatter()


def _fill(rng, template):
    """Fill a template's slots with random choices from SLOTS."""
    values = {}
    for _, name, _, _ in _FORMATTER.parse(template):
        if name and name not in values:
            values[name] = rng.choice(SLOTS[name])
    return template.format(**values)


def _build_pool(rng, templates):
    """Return (sentences as (text, words), distinct sentences bucketed by word count) for one speaker.

    The first list keeps repeats so that a uniform draw from it picks templates about evenly.
    """
    sentences = []
    for template in templates:
        for _ in range(VARIANTS_PER_TEMPLATE):
            text = _fill(rng, template)
            words = len(text.split())
            if words <= MAX_SENTENCE_WORDS:
                sentences.append((text, words))
    by_len = [[] for _ in range(MAX_SENTENCE_WORDS + 1)]
    for text, words in dict(sentences).items():
        by_len[words].append(text)
    missing = [k for k in range(1, MAX_SENTENCE_WORDS + 1) if not by_len[k]]
    if missing:
        raise ValueError(f"sentence pool has no sentence of length {missing}")
    return sentences, by_len


@functools.cache
def _pools():
    """Build the rep and prospect sentence pools once."""
    rng = random.Random(POOL_SEED)
    return _build_pool(rng, REP_SENTENCES), _build_pool(rng, PROSPECT_SENTENCES)


def _length(rng, low, high, median, sigma):
    """Draw a word count from a log-normal distribution clipped to [low, high]."""
    return min(high, max(low, round(rng.lognormvariate(math.log(median), sigma))))


def _text(rand, pool, target):
    """Concatenate pool sentences into exactly `target` words, never repeating a sentence back to back."""
    sentences, by_len = pool
    parts, previous = [], None
    while target > MAX_SENTENCE_WORDS:
        text, words = sentences[int(rand() * len(sentences))]
        if text == previous:
            continue
        parts.append(text)
        previous = text
        target -= words
    bucket = by_len[target]
    parts.append(bucket[int(rand() * len(bucket))])
    return " ".join(parts)


def generate_pairs(n: int, seed: int = 0) -> Iterator[dict]:
    """Lazily yield n {"input", "output"} sales-roleplay records, deterministic for a given seed."""
    rng = random.Random(seed)
    rep_pool, prospect_pool = _pools()
    for _ in range(n):
        input_words = _length(rng, *INPUT_WORDS)
        output_words = _length(rng, *OUTPUT_WORDS)
        yield {"input": _text(rng.random, rep_pool, input_words),
               "output": _text(rng.random, prospect_pool, output_words)}


def main(argv=None):
    """Write generate_pairs() output as JSONL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="number of records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="-", help="output JSONL path ('-' for stdout)")
    args = parser.parse_args(argv)
    out = sys.stdout if args.out == "-" else open(args.out, "w", encoding="utf-8", newline="\n")
    try:
        for record in generate_pairs(args.n, args.seed):
            out.write(json.dumps(record) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()


if __name__ == "__main__":
    main()

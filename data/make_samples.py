"""Generate deterministic sample data for the sales-roleplay chatbot.

The bot always plays the prospect/customer; the user is the sales rep practising.
Writes, next to this script:
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

# --------------------------------------------------------------------------
# People, places and companies
# --------------------------------------------------------------------------

FIRST_NAMES = [
    "Dana", "Marcus", "Priya", "Tom", "Elena", "Jamal", "Grace", "Victor", "Aisha",
    "Ben", "Rosa", "Kevin", "Mei", "Frank", "Olivia", "Raj", "Carla", "Derek",
    "Hannah", "Luis", "Sandra", "Owen", "Nadia", "Greg", "Fatima", "Paul", "Yuki",
    "Brenda", "Samuel", "Ingrid", "Tariq", "Julie", "Hector", "Colleen", "Andre",
    "Wendy", "Nikhil", "Martha", "Scott", "Lena",
]
LAST_NAMES = [
    "Whitfield", "Okafor", "Raman", "Kowalski", "Marquez", "Bennett", "Nguyen",
    "Hollis", "Farouk", "Lindqvist", "Castillo", "Brennan", "Choi", "Delgado",
    "Abernathy", "Patel", "Sorensen", "McAllister", "Haddad", "Tanaka", "Greene",
    "Ostrowski", "Fitzgerald", "Mbeki", "Romano", "Schultz", "Alvarez", "Dunn",
    "Yamamoto", "Pierce", "Novak", "Ibrahim", "Carver", "Lund", "Esposito", "Boyd",
]
REP_NAMES = [
    "Jordan", "Alex", "Taylor", "Chris", "Morgan", "Sam", "Jess", "Riley", "Casey",
    "Drew", "Jamie", "Kyle", "Maya", "Nate", "Tessa", "Zoe",
]
VENDORS = [
    "Brightline", "Northpeak", "Clearpath", "Bluefin", "Trellis", "Anchorpoint",
    "Lumen", "Fieldstone", "Meridian", "Tidewater", "Quarry", "Kestrel",
]
COMPANY_STEMS = [
    "Ridgeway", "Bluewater", "Summit", "Harbor", "Oakline", "Pioneer", "Granite",
    "Westfield", "Cedar", "Keystone", "Redwood", "Lakeside", "Ironwood", "Silverline",
    "Maple", "Northgate", "Crescent", "Prairie", "Riverbend", "Hillcrest",
]
LOCATIONS = [
    "Ohio", "Tampa", "suburban Chicago", "Phoenix", "eastern Tennessee", "Sacramento",
    "Denver", "upstate New York", "Austin", "Boise", "Charlotte", "Minneapolis",
    "central Pennsylvania", "Kansas City", "Portland, Maine", "San Diego",
    "Des Moines", "Richmond",
]
COMPANY_SIZES = [10, 12, 15, 22, 30, 45, 60, 75, 90, 120, 150, 200, 260, 350, 500, 750, 1200]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August",
    "September", "October", "November", "December",
]
QUARTERS = ["Q2", "Q3", "Q4", "the new fiscal year"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"]
APPROVAL_AMOUNTS = ["$2,500", "$5,000", "$10,000", "$25,000"]
COMMITTEES = [
    "our procurement committee", "the leadership team", "a purchasing committee",
    "the executive team",
]
PROJECTS = [
    "an ERP migration", "an office move", "a merger", "a reorganization", "a website rebuild",
    "a system upgrade",
]
TENURES = ["three weeks", "a month", "six weeks", "two months"]
YEARS = ["four", "six", "ten", "fifteen"]
CONTRACT_YEARS = ["two", "three", "five"]
ROLLOUT_WEEKS = ["three", "four", "six", "eight"]
TRIGGERS = [
    "you're hiring for several roles right now",
    "you opened a new location this year",
    "your company has been growing quickly",
    "we work with a couple of companies near you",
    "you were listed as the person who handles this",
    "you downloaded one of our guides last month",
]

INDUSTRIES = [
    dict(name="logistics", sector="logistics", plural="logistics companies",
         companies=[("logistics firm", "Logistics"), ("freight brokerage", "Freight"),
                    ("trucking company", "Transport"), ("third-party warehouse operator", "Distribution")],
         titles=["IT director", "operations manager", "VP of operations", "fleet manager", "controller"],
         bosses=["CFO", "COO", "owner"], busy="peak season",
         rule="shipper data security requirements", data="shipment and customer data"),
    dict(name="healthcare", sector="healthcare", plural="healthcare practices",
         companies=[("multi-location dental group", "Dental Group"), ("family medicine clinic", "Family Medicine"),
                    ("home health agency", "Home Health"), ("physical therapy practice", "Physical Therapy")],
         titles=["practice administrator", "office manager", "IT manager", "director of operations"],
         bosses=["practice owner", "medical director", "CFO"], busy="flu season",
         rule="HIPAA", data="patient records"),
    dict(name="SaaS", sector="SaaS", plural="software companies",
         companies=[("B2B software company", "Software"), ("SaaS startup", "Labs"),
                    ("software company", "Systems")],
         titles=["head of sales ops", "VP of engineering", "CTO", "head of people", "finance lead"],
         bosses=["CEO", "CFO", "founders"], busy="our big product launch",
         rule="SOC 2", data="customer data"),
    dict(name="manufacturing", sector="manufacturing", plural="manufacturers",
         companies=[("plastics manufacturer", "Plastics"), ("machine shop", "Machine Works"),
                    ("food packaging plant", "Packaging"), ("metal fabrication company", "Fabrication")],
         titles=["plant manager", "IT manager", "purchasing manager", "HR director", "controller"],
         bosses=["CFO", "owner", "general manager", "president"], busy="our annual retooling shutdown",
         rule="customer supplier security audits", data="engineering drawings"),
    dict(name="retail", sector="retail", plural="retailers",
         companies=[("chain of outdoor-gear stores", "Outfitters"), ("regional grocery chain", "Market"),
                    ("furniture retailer", "Home"), ("group of boutique clothing stores", "Boutique")],
         titles=["store operations manager", "IT director", "head of marketing", "regional manager"],
         bosses=["CEO", "owner", "CFO"], busy="the holiday season",
         rule="PCI compliance", data="cardholder data"),
    dict(name="construction", sector="construction", plural="contractors",
         companies=[("general contractor", "Builders"), ("commercial roofing company", "Roofing"),
                    ("residential builder", "Homes"), ("electrical contractor", "Electric")],
         titles=["project manager", "operations director", "office manager", "safety manager"],
         bosses=["owner", "president", "CFO"], busy="the start of building season",
         rule="insurance carrier requirements", data="bids and project files"),
    dict(name="education", sector="education", plural="schools",
         companies=[("public school district", "School District"), ("community college", "Community College"),
                    ("charter school network", "Academies"), ("private K-12 school", "Academy")],
         titles=["technology director", "business manager", "assistant superintendent", "HR coordinator"],
         bosses=["superintendent", "school board", "president"], busy="the start of the school year",
         rule="FERPA and student privacy rules", data="student records"),
    dict(name="finance", sector="financial services", plural="financial firms",
         companies=[("credit union", "Credit Union"), ("wealth management firm", "Wealth Partners"),
                    ("accounting firm", "CPA Group"), ("community bank", "Community Bank")],
         titles=["CIO", "operations manager", "compliance officer", "branch manager", "controller"],
         bosses=["CEO", "CFO", "board"], busy="tax season",
         rule="regulatory vendor management rules", data="account data"),
    dict(name="hospitality", sector="hospitality", plural="hospitality groups",
         companies=[("boutique hotel group", "Hotels"), ("restaurant group", "Restaurant Group"),
                    ("lakeside resort", "Resort"), ("catering company", "Catering")],
         titles=["general manager", "director of operations", "IT manager", "HR manager"],
         bosses=["owner", "regional VP", "ownership group"], busy="the summer rush",
         rule="PCI compliance", data="guest payment data"),
    dict(name="legal", sector="the legal world", plural="law firms",
         companies=[("law firm", "Law"), ("personal injury firm", "Law Group"),
                    ("estate planning practice", "Legal")],
         titles=["office administrator", "IT manager", "firm administrator", "paralegal manager"],
         bosses=["managing partner", "partners"], busy="a big trial",
         rule="client confidentiality rules", data="client files"),
    dict(name="real estate", sector="real estate", plural="real estate firms",
         companies=[("property management company", "Property Management"),
                    ("residential brokerage", "Realty"), ("commercial real estate firm", "Properties")],
         titles=["operations manager", "marketing director", "property manager", "controller"],
         bosses=["broker-owner", "principal", "CFO"], busy="the spring market",
         rule="tenant privacy rules", data="tenant and owner data"),
    dict(name="agriculture", sector="agriculture", plural="farms and growers",
         companies=[("family-owned farming operation", "Farms"), ("grain cooperative", "Co-op"),
                    ("greenhouse grower", "Growers"), ("dairy operation", "Dairy")],
         titles=["farm manager", "general manager", "office manager", "operations lead"],
         bosses=["owner", "co-op board", "family partners"], busy="harvest",
         rule="buyer food safety audits", data="crop and financial records"),
    dict(name="nonprofit", sector="the nonprofit world", plural="nonprofits",
         companies=[("nonprofit", "Foundation"), ("community health nonprofit", "Community Services")],
         titles=["executive director", "operations director", "development director", "finance manager"],
         bosses=["board", "board treasurer"], busy="our annual fundraising gala",
         rule="donor privacy expectations", data="donor records"),
    dict(name="automotive", sector="the auto business", plural="dealerships and repair shops",
         companies=[("car dealership group", "Auto Group"), ("auto repair chain", "Auto Care")],
         titles=["general manager", "service director", "office manager", "IT manager"],
         bosses=["dealer principal", "owner", "CFO"], busy="our year-end sales event",
         rule="the FTC Safeguards Rule", data="customer financing data"),
]

# Each product: unit = (noun, price phrase, low, high, seats per employee).
# system/users may be None; templates that need a missing slot are skipped.
# skip lists objection types that make no sense for the product.
PRODUCTS = [
    dict(vendor_kind="CRM vendor", long="a CRM platform", topic="tracking leads and customer follow-ups",
         competitors=["Pipewell", "DealStream", "Contactly", "SalesNest"],
         users="salespeople", systems=["Outlook", "Gmail", "our ERP"],
         process="a shared spreadsheet and everyone's inbox", pain="deals falling through the cracks",
         benefit="keep every lead and follow-up in one place", result="about a fifth more deals closed",
         unit=("users", "per user a month", 35, 120, 0.2), skip=[], industries=None),
    dict(vendor_kind="payroll provider", long="a payroll and HR platform", topic="payroll and time tracking",
         competitors=["Payvance", "ClockCore", "PayLedger"],
         users="managers", systems=["QuickBooks", "our time clocks", "our accounting software"],
         process="a bookkeeper running payroll by hand", pain="fixing payroll errors every other week",
         benefit="run payroll in minutes and stay on top of tax filings",
         result="payroll processing time cut by more than half",
         unit=("employees", "per employee a month", 6, 15, 1.0), skip=[], industries=None),
    dict(vendor_kind="security provider", long="a managed cybersecurity service",
         topic="endpoint security and threat monitoring",
         competitors=["ShieldPoint", "Cyberwall", "SentraGuard"],
         users="staff", systems=["Microsoft 365", "our firewall", "our help desk tools"],
         process="antivirus and a firewall an IT contractor set up", pain="phishing emails getting through",
         benefit="catch threats around the clock without hiring a security team",
         result="a big drop in phishing incidents",
         unit=("devices", "per device a month", 8, 25, 1.0), skip=[], industries=None),
    dict(vendor_kind="telematics provider", long="a fleet telematics system",
         topic="vehicle tracking and driver safety",
         competitors=["FleetSight", "TrackRoute", "RoadLogic"],
         users="drivers", systems=["our dispatch software", "our fuel cards", "our ELD devices"],
         process="drivers calling in their locations", pain="never knowing where the trucks actually are",
         benefit="see where every vehicle is and cut fuel costs", result="fuel costs down around twelve percent",
         unit=("vehicles", "per vehicle a month", 20, 45, 0.3), skip=[],
         industries=["logistics", "construction", "agriculture", "automotive", "retail"]),
    dict(vendor_kind="copier company", long="managed print and copier leasing", topic="printers and copiers",
         competitors=["PrintPro Solutions", "Copyline", "OfficeEdge"],
         users="office staff", systems=["our network", "our document management system", "Google Workspace"],
         process="copiers bought outright years ago",
         pain="printers jamming and toner running out at the worst time",
         benefit="replace old copiers with one predictable monthly bill, toner and service included",
         result="print costs down about thirty percent",
         unit=("machines", "per machine a month", 90, 300, 0.03), skip=["security"], industries=None),
    dict(vendor_kind="marketing agency", long="a digital marketing agency retainer",
         topic="local search and paid advertising",
         competitors=["BrightFunnel", "RankRise", "LocalLift"],
         users=None, systems=["our website", "Google Ads", "our booking system"],
         process="word of mouth and a Facebook page", pain="not getting enough qualified leads from the website",
         benefit="get more qualified leads from local search", result="inbound leads roughly doubled",
         unit=("locations", "per location a month", 900, 2500, 0.02), skip=["security"], industries=None),
    dict(vendor_kind="benefits broker", long="a group benefits insurance plan",
         topic="employee benefits and insurance",
         competitors=["Hartwell Mutual", "Keystone Benefits", "Ridgeline Benefit Advisors"],
         users=None, systems=None,
         process="a plan the broker renews every year without much thought",
         pain="premiums going up every single year",
         benefit="get better coverage without the yearly premium jump",
         result="premiums held flat at renewal",
         unit=("employees", "per employee a month", 380, 650, 1.0), skip=["implementation", "security"],
         industries=None),
    dict(vendor_kind="hosting provider", long="managed cloud hosting", topic="servers and hosting",
         competitors=["StratusCore", "NimbusHost", "Cloudvale"],
         users="developers", systems=["our existing servers", "our backup system", "our ERP"],
         process="servers in a closet downstairs", pain="downtime whenever the old server acts up",
         benefit="move servers to the cloud with guaranteed uptime", result="almost no unplanned downtime",
         unit=("servers", "per server a month", 150, 600, 0.04), skip=[], industries=None),
    dict(vendor_kind="phone provider", long="a cloud phone system", topic="business phones and call routing",
         competitors=["RingLane", "CallHarbor", "VoxLine"],
         users="front desk staff", systems=["our CRM", "Microsoft Teams", "our scheduling software"],
         process="the old desk phones that came with the building",
         pain="missed calls when the front desk is busy",
         benefit="route every call to the right person, even on cell phones",
         result="missed calls cut by more than half",
         unit=("lines", "per line a month", 18, 35, 0.5), skip=[], industries=None),
    dict(vendor_kind="scheduling vendor", long="an employee scheduling app", topic="shift scheduling",
         competitors=["ShiftHero", "Rosterly", "TimeTable"],
         users="shift managers", systems=["our payroll system", "our HR system", "our time clocks"],
         process="a paper schedule taped to the break room wall", pain="last-minute call-outs nobody can cover",
         benefit="fill open shifts in minutes instead of hours", result="overtime down about fifteen percent",
         unit=("employees", "per employee a month", 3, 9, 1.0), skip=[],
         industries=["hospitality", "retail", "healthcare", "manufacturing", "logistics"]),
    dict(vendor_kind="POS vendor", long="a point-of-sale system", topic="checkout and inventory",
         competitors=["Tillpoint", "Registra", "CounterTop"],
         users="cashiers", systems=["QuickBooks", "our online store", "our inventory system"],
         process="an old register and a separate card terminal",
         pain="inventory counts never matching what's on the shelf",
         benefit="tie checkout, inventory, and online orders together", result="inventory errors down sharply",
         unit=("registers", "per register a month", 60, 150, 0.05), skip=[],
         industries=["retail", "hospitality", "automotive"]),
    dict(vendor_kind="payables software vendor", long="an accounts payable automation tool",
         topic="invoice processing and approvals",
         competitors=["Billflow", "PayablesHQ", "InvoiceIQ"],
         users="finance team", systems=["QuickBooks", "NetSuite", "our ERP"],
         process="paper invoices and approval emails",
         pain="late fees on invoices that got lost in someone's inbox",
         benefit="get invoices approved and paid without chasing signatures",
         result="invoice processing time cut by seventy percent",
         unit=("approvers", "per approver a month", 25, 60, 0.05), skip=[], industries=None),
    dict(vendor_kind="training vendor", long="an online training platform",
         topic="employee training and compliance courses",
         competitors=["Learnwise", "CourseHub", "SkillPath"],
         users="employees", systems=["our HR system", "Microsoft Teams", "single sign-on"],
         process="binders and an annual in-person session", pain="chasing people to finish required training",
         benefit="assign and track required training automatically",
         result="completion rates above ninety percent",
         unit=("learners", "per learner a month", 4, 12, 1.0), skip=[], industries=None),
    dict(vendor_kind="document software vendor", long="a document management and e-signature tool",
         topic="contracts and paperwork",
         competitors=["SignStack", "DocuVault", "PaperTrail"],
         users="staff", systems=["Google Drive", "our CRM", "Microsoft 365"],
         process="printing, signing, and scanning everything", pain="contracts stuck waiting on signatures",
         benefit="get documents signed and filed in minutes", result="contracts signed days faster",
         unit=("users", "per user a month", 10, 40, 0.5), skip=[], industries=None),
]

# --------------------------------------------------------------------------
# Prospect (bot) lines
# --------------------------------------------------------------------------

OBJECTIONS = {
    "price": [
        "Honestly, the price is the problem. We're a {size}-person {company_noun} and {price} adds up fast.",
        "Our budget for this year is already spoken for. Nothing new gets approved until {quarter}.",
        "We looked at something similar last year and it came in way over what we could spend. "
        "What makes yours any different?",
        "I'd need to see real numbers. If it doesn't pay for itself inside a year, it's a no.",
        "Money is tight right now. We just cut two positions, so asking for new spending "
        "is not going to go over well.",
        "{price}? For a company our size that's steep. {competitor} quoted us a lot less.",
        "What's the total cost, all in? Setup fees, training, support, the whole thing. "
        "I've been surprised by add-ons before.",
        "Budget is frozen until {quarter}. You can call me then, but I can't promise anything.",
        "We don't have a line item for this. I'd have to take money from something else, "
        "and I don't know what that would be.",
        "Is there a smaller package? We don't need all of that, and I'm not paying for features we won't use.",
        "Around {annual} a year is real money for us. That's most of a part-time salary.",
    ],
    "timing": [
        "Now's really not a good time. We're heading into {busy} and nobody here has bandwidth for anything new.",
        "Reach out again after {month}. Things should calm down by then.",
        "We're in the middle of {project}, so anything else is on hold until that's done.",
        "Maybe next year. We've already set our priorities for this one.",
        "The timing is bad. I started in this role {tenure} ago and I'm still figuring out what we have.",
        "I can't take on another project right now. Ask me again in {quarter}.",
        "We're short-staffed until we fill a couple of openings. I'm not starting anything new until then.",
        "It's the end of the quarter and I'm buried. Can this wait a few weeks?",
        "Once {busy} is behind us I might have time to look. Not before.",
    ],
    "competitor": [
        "We already use {competitor} for that, and it works well enough.",
        "We went with {competitor} a few years ago. Everyone's trained on it, "
        "and I don't want to make them start over.",
        "Honestly, {competitor} does everything we need. Why would I switch?",
        "We're pretty happy with {competitor}. Unless you're dramatically cheaper, I don't see it.",
        "What do you do that {competitor} doesn't? From your website, it looks like the same thing.",
        "Our team built all their workflows around {competitor}. Switching would be a huge headache.",
        "{competitor} gives us a discount because we've been with them so long. Hard to beat that.",
        "We just renewed with {competitor} last month, so there's not much to talk about.",
        "Our {boss} picked {competitor} personally. I'm not going to be the one who suggests replacing it.",
    ],
    "authority": [
        "I'm not the one who makes that call. You'd need to talk to our {boss}.",
        "Anything over {amount} has to go through {committee}, and they only meet once a month.",
        "I can pass it along, but our {boss} decides on anything like this.",
        "Our {boss} would have to sign off, and that's not an easy sell.",
        "Even if I liked it, I'd need buy-in from finance and IT. That's at least two more meetings.",
        "I can influence it, but I don't own the budget. "
        "Can you put together something I can forward to our {boss}?",
        "New vendors get reviewed once a quarter by {committee}. The next window is in {month}.",
        "Honestly, I'm not sure who would own this. Probably our {boss}, but I'd have to check.",
        "I'd love to say yes, but I can't sign anything over {amount} without approval.",
    ],
    "no_need": [
        "We don't really have that problem. We've been fine with {process}.",
        "I don't think we need that. We're a {small_size}-person {company_noun}, not a big corporation.",
        "We've been doing it this way for {years} years and nobody's complained.",
        "What problem would this solve for us, exactly? Because I'm not seeing one.",
        "Sounds nice, but as far as we're concerned it's a solution looking for a problem.",
        "We handle that in-house. It's not perfect, but it's not broken either.",
        "I don't see the need. We get by with {process}, and it gets the job done.",
        "Honestly, with {small_size} people, I don't think we're big enough to need {product_long}.",
        "If it ain't broke, I'm not fixing it. And right now it isn't broke.",
    ],
    "bad_experience": [
        "We tried something like this a couple of years ago and it was a disaster. "
        "Nobody used it and we were stuck paying for it.",
        "The last vendor promised us the moon and then disappeared after the contract was signed. "
        "So forgive me if I'm skeptical.",
        "We had a bad experience with a {vendor_kind} before. Support took a week to answer anything.",
        "Every vendor tells me implementation takes a few weeks. The last one took eight months.",
        "We got hit with surprise fees on the last one. I'm not going through that again.",
        "Our last rollout went so badly that people still bring it up in meetings.",
        "I've heard this pitch before. The last company said the exact same things, and none of it was true.",
        "The last tool we bought looked great in the demo and fell apart as soon as we loaded our real data.",
        "The last time we switched to a new {vendor_kind}, we lost a month of records in the move. Never again.",
    ],
    "contract": [
        "We're locked into a contract with {competitor} until {month}.",
        "We just signed a {contract_years}-year agreement, so there's nothing I can do right now.",
        "Our contract auto-renews in {month}, and the penalty for leaving early is brutal.",
        "Even if I wanted to switch, we'd owe {competitor} for the rest of the term.",
        "We're under contract through {month}. Call me about sixty days before that and we can talk.",
        "Legal would never let me break the current agreement. It's not worth the fight.",
        "I'd have to check, but I think we're committed to {competitor} for at least another year.",
        "How long is your contract? I'm not signing anything longer than twelve months after the last experience.",
        "We're {contract_years} years into a deal with {competitor}, "
        "and getting out early would cost more than it saves.",
    ],
    "security": [
        "Where is our data stored? We have to take {rule} seriously, and I'd need that in writing.",
        "Are you SOC 2 certified? Our security team won't even look at a vendor without it.",
        "Anything that touches {data} has to go through a security review, and that takes months.",
        "Our IT team is going to want a full security questionnaire before we can talk seriously.",
        "We had a phishing incident last year, so anything new that connects to our systems is a hard sell.",
        "Will you sign our data processing agreement? A lot of vendors won't.",
        "I'd need to know who on your side has access to our {data} and how it's encrypted.",
        "Compliance is going to ask about {rule}. If you can't answer that, this is a non-starter.",
        "Is it hosted in the US? Our customers ask about that constantly.",
    ],
    "implementation": [
        "How long does it take to set up? We're {small_size} people with no IT department, "
        "just me and a contractor.",
        "My team is already stretched thin. I can't ask them to learn another system right now.",
        "Migrating our data sounds like a nightmare. Who does that work, you or us?",
        "We'd need it to work with {system}. Does it?",
        "Who trains my {users}? Because they are not going to read a manual.",
        "How much of my team's time does this take in the first month? Be honest.",
        "We run everything through {system}. If it doesn't talk to that, it's dead on arrival.",
        "I like the idea, but I don't have anyone who can own the implementation.",
        "Every new system means weeks of my {users} calling me with questions. I don't have that kind of time.",
    ],
    "send_email": [
        "Just send me an email and I'll take a look.",
        "Can you send something over? I don't have time to talk right now.",
        "Send me some information and I'll get back to you if we're interested.",
        "Put it in an email. I'll forward it to the right person.",
        "I'm about to walk into a meeting. Can you email me the details?",
        "Send me a one-pager. If it looks relevant, I'll reach out.",
        "You can email me. I'll be honest, though, I get dozens of these a week.",
        "Drop me a note with pricing. No brochures, just numbers.",
        "Email is better for me. I'm never at my desk.",
    ],
    "busy": [
        "I've got about two minutes. What is this about?",
        "How did you get this number?",
        "We're not interested, thanks.",
        "I'm in the middle of something. Is this a sales call?",
        "Look, I get a lot of these calls. What makes this one worth my time?",
        "Please take us off your list.",
        "I really can't talk right now.",
        "Not interested. We're all set on {topic}.",
        "Who is this again? I didn't catch the company.",
    ],
}

# Questions the prospect asks, keyed by topic, with matching rep answers.
QUESTIONS = {
    "pricing": [
        "Can you give me a ballpark on pricing for about {seats} {units}?",
        "What would this cost us, roughly? I don't need an exact quote.",
        "Is it priced per {unit_noun} or flat? And are there setup fees?",
        "What are we talking about, cost-wise, for a company our size?",
    ],
    "onboarding": [
        "What does onboarding look like, and how long until we're up and running?",
        "What does a typical rollout look like for a {size}-person company?",
        "Who does the setup work, you or us?",
        "How long before my team is actually using it day to day?",
    ],
    "references": [
        "Do you have a case study from another {company_noun}?",
        "Who else in {sector} is using this?",
        "What kind of results have your other customers seen?",
        "Can I talk to a customer of yours? Not one you hand-picked, ideally.",
    ],
    "trial": [
        "What's the contract length, and is there a trial period?",
        "Is there a free trial? I'd want my team to actually use it before we commit.",
        "Can we start small and cancel if it doesn't work out?",
        "What happens if we sign and it turns out not to be a fit?",
    ],
    "integration": [
        "Does it integrate with {system}?",
        "We use {system} for almost everything. How would this fit in?",
        "Would we have to give up {system}? Because that's not happening.",
    ],
    "support": [
        "What kind of support do you offer? Phone, or just a ticket system?",
        "Who would our point of contact be after we sign?",
        "If something breaks on a Saturday, who do I call?",
    ],
    "how_it_works": [
        "Okay, you have my attention. How does it actually work?",
        "Huh. That's actually something we've talked about internally. Tell me more.",
        "We have been struggling with {pain}. Could this help with that?",
        "Walk me through what my {users} would actually see.",
        "How does it actually work, day to day?",
    ],
    "difference": [
        "How is this different from what {competitor} does?",
        "Why would I pick you over {competitor}? Give me the short version.",
        "What's the one thing you do better than {competitor}?",
    ],
}

SOFT_POSITIVE = [
    "Okay, that's fair. I hadn't thought about it that way.",
    "That helps. I'd want to see it in writing, though.",
    "Alright, if you can put that in writing, I'm listening.",
    "That's better than I expected. Still not sure it's a fit, though.",
    "Hm. If that's true, it changes things a bit.",
    "Okay. I'll admit, being able to {benefit} sounds useful.",
    "That's reasonable. What would you need from me?",
    "Fair enough. I'm not saying yes, but I'm not saying no.",
    "Okay, that actually addresses my main concern.",
    "I appreciate the straight answer. Most reps dodge that one.",
]

AGREE = [
    "Fine, send me a calendar invite for next {weekday}. Thirty minutes, max.",
    "Okay, I'm willing to see a demo. Can you do {weekday} afternoon?",
    "Let's set something up. Include our {boss} on the invite.",
    "Alright, you've earned fifteen minutes. Send over a few times.",
    "Sure, let's do a short call next week. Bring actual pricing this time.",
    "If you can show me it working with {system}, I'll take a meeting.",
    "That sounds reasonable. Let's get something on the calendar for {weekday}.",
    "Okay. Let's talk {weekday}. But if it's a canned demo, I'm hanging up.",
    "Send me the trial link and I'll have two of my {users} try it this week.",
]

DEFER = [
    "Let me think about it and get back to you.",
    "Call me back after {month} and we'll see where things are.",
    "I'll talk to our {boss} and let you know.",
    "Not right now. Maybe next year.",
    "Send me the details and give me a week to look them over.",
    "I'll keep you in mind, but no promises.",
]

DECLINE = [
    "I appreciate the effort, but we're going to pass.",
    "Thanks, but it's not a fit for us right now.",
    "I'm going to stop you there. We're not going to move on this.",
    "Look, you've been polite about it, but the answer is no.",
    "I don't think so. Good luck, though.",
]

PHONE_ANSWERS = [
    "Hello, this is {first}.",
    "{company}, this is {first}.",
    "{first} speaking.",
    "Hi, this is {first}. Who's calling?",
    "Yeah, {first} here.",
    "Good morning, {company}, {first} speaking.",
    "This is {first} {last}.",
    "Hello? This is {first}, go ahead.",
]

BRIDGES = [
    "Okay. But ", "Maybe. The other thing is, ", "Fine, but ", "Even so, ", "Sure, but ",
    "That's fair, but ", "I hear you. Still, ", "Alright, but ",
]
AFTER_REPLY = ["But ", "That said, ", "Still, ", "Anyway, "]
STACKERS = ["On top of that, ", "And ", "Plus, ", "Also, "]
NO_FOLLOW_UP = ("busy", "send_email")  # replies to these handles grant time; don't pile on an objection
STACKABLE = ["price", "timing", "competitor", "authority", "contract", "security", "implementation"]

TONE_DESCRIPTIONS = {
    "busy": "You are busy and distracted, and you keep your answers short.",
    "skeptical": "You are skeptical of salespeople and push back on vague claims.",
    "friendly": "You are friendly and polite, but you will not buy something you do not need.",
    "irritated": "You are irritated by the interruption and can be curt.",
    "analytical": "You are analytical and want specifics, numbers, and proof.",
}
TONE_OPENERS = {
    "busy": ["I've only got a minute.", "Sorry, it's a crazy day here.", "I'm between meetings.",
             "Make it quick, please."],
    "skeptical": ["I'll be honest with you.", "I've heard this pitch before.", "Hm.",
                  "Okay, I'm going to push back a little."],
    "friendly": ["Thanks for reaching out.", "Oh, hi, thanks for calling.", "I appreciate the call.",
                 "No worries, I have a second."],
    "irritated": ["This is the third call like this today.", "Seriously?", "You caught me at a bad time.",
                  "I really don't have time for this."],
    "analytical": ["Let me ask you something first.", "Okay, let's get specific.",
                   "I like to look at the numbers first.", "Let me be precise about where we are."],
}
TONE_LEAD_INS = {
    "busy": ["Sorry, ", "Look, "],
    "skeptical": ["Honestly, ", "Well, ", "Look, "],
    "friendly": ["So, ", "Well, ", "To be honest, "],
    "irritated": ["Look, ", "Listen, "],
    "analytical": ["Frankly, ", "Realistically, "],
}
TONE_CLOSERS = {
    "busy": ["I have to jump off in a minute.", "Anything else?", "I need to run."],
    "skeptical": ["Convince me I'm wrong.", "No offense, but that's where I am.", "Prove me wrong."],
    "friendly": ["Sorry I can't be more helpful.", "Hope that makes sense.", "No offense meant."],
    "irritated": ["Please don't keep calling.", "I don't have all day.", "That's really all I have to say."],
    "analytical": ["I'd want to see data before going further.", "What do the numbers look like?",
                   "I need specifics, not a brochure."],
}

# --------------------------------------------------------------------------
# Sales rep (user) lines
# --------------------------------------------------------------------------

OPENERS = [
    "Hi {first}, this is {rep} with {vendor}. Do you have a quick minute?",
    "Hi {first}, {rep} from {vendor} here. I'll be brief: we help {industry_plural} {benefit}. "
    "Is that something on your radar this year?",
    "Good morning {first}. My name is {rep}, and I work with {industry_plural} on {topic}. "
    "I'm calling because {trigger}, and I wanted to see if you're dealing with {pain}.",
    "{first}, this is {rep} at {vendor}. We've never spoken, so I'll be upfront: this is a sales call. "
    "Can I take thirty seconds to tell you why I called, and you tell me if it's worth continuing?",
    "Hey {first}, it's {rep} from {vendor}. I'm calling because we just helped another {company_noun} "
    "in {region} get {result}, and I thought it might be relevant to you.",
    "Hi {first}, I sent you an email last week about {topic} and wanted to follow up. "
    "Did you get a chance to look at it?",
    "Hello {first}. I'm reaching out because {trigger}. We help teams like yours with {topic}. "
    "Would you be open to a short conversation?",
    "Hi {first}, thanks for picking up. I'm {rep} with {vendor}. We provide {product_long}, "
    "mostly for {industry_plural} between twenty and a thousand people. The reason I'm calling is that "
    "most of the people I talk to in your role tell me they lose time every week to {pain}. "
    "Our customers usually see {result} within the first few months. "
    "Would it be crazy to set up twenty minutes to see if that applies to you?",
    "{first}, {rep} with {vendor}. I work with {industry_plural} on {topic}, and I'd like to ask you two "
    "quick questions to see if we're a fit. Is that alright?",
    "Hi {first}. {rep} here from {vendor}. I know you weren't expecting my call, so I'll keep it short. "
    "We help companies like {company} {benefit}. Can I ask how you're handling that today?",
]
COLD_CHECK_OPENERS = [
    "Hi, is this {first}? Great. I'm {rep} from {vendor}, and I'll keep it short.",
    "Hello, am I speaking with {first} {last}? This is {rep} calling from {vendor} about {topic}.",
    "Hi, I'm trying to reach {first}. This is {rep} with {vendor}.",
]

# Discovery questions the rep asks, grouped with prospect answers that fit every question in the group.
DISCOVERY = {
    "current": (
        ["How are you handling {topic} today?",
         "Can I ask what you're using for {topic} right now?",
         "Walk me through how you handle {topic} at {company} today."],
        ["Right now it's mostly {process}. It works, but it's slow.",
         "Mostly {process}. Lots of manual work.",
         "We use {competitor}. It's fine, but we still struggle with {pain}.",
         "It's a mix. Some teams use {competitor}, others still rely on {process}.",
         "We've tried a couple of things over the years. Nothing really stuck.",
         "It's handled by one person in the office, and when that person is out, nothing happens."]),
    "pain": (
        ["What's the biggest headache with your current setup?",
         "If you could fix one thing about {topic} at {company}, what would it be?",
         "What part of {topic} gives you the most trouble?"],
        ["Honestly, the biggest headache is {pain}. It eats a few hours every week.",
         "If I'm being honest, what keeps me up at night is {pain}.",
         "Probably {pain}. Everything else is manageable.",
         "Nothing major. Small annoyances, mostly."]),
    "time": (
        ["Out of curiosity, how much time does your team spend on {topic} in a typical week?",
         "How many hours a week would you guess go into {topic}?"],
        ["A few hours a week, maybe more around {busy}.",
         "More than it should. Most of it goes to {pain}.",
         "I've never measured it. Too much, probably.",
         "We don't really track it. That's probably part of the problem."]),
    "size": (
        ["Roughly how many {units} would we be talking about?",
         "How many {units} are we talking about at {company}?"],
        ["About {seats} {units}, give or take.",
         "Around {seats} {units} right now, and more if we keep growing.",
         "I'd have to check. Somewhere around {seats} {units}."]),
    "people": (
        ["Who else on your team is involved when it comes to {topic}?",
         "Besides you, who would have a say in a decision like this?"],
        ["Me, and our {boss} signs off on anything that costs money.",
         "Mostly me. Our {boss} gets involved if it's expensive.",
         "It's spread across a few people, which is part of the problem.",
         "Our {boss}, and probably someone from finance."]),
    "history": (
        ["When was the last time you looked at alternatives for {topic}?",
         "What made you pick your current approach in the first place?"],
        ["A few years ago. It was the cheapest option at the time, honestly.",
         "We never really looked. It's just how it's always been done.",
         "Back when we were half the size. We probably should look again."]),
    "criteria": (
        ["What would have to be true for you to consider making a change this year?",
         "If you did switch, what would matter most to you?"],
        ["It would have to pay for itself within a year.",
         "Easy setup. My team has no patience for long rollouts.",
         "A price I can approve without going to our {boss}.",
         "Honestly, something would have to break first."]),
}

# Rep responses to each objection, each paired with prospect replies that answer that specific line.
HANDLES = {
    "price": [
        ("I understand, and I'm not asking you to find budget today. Most of our customers fund this out of "
         "the time it saves. Would it help if I put together a quick ROI estimate based on your numbers?",
         ["Sure, if you can do it without me spending hours pulling numbers.",
          "An ROI estimate from the vendor? I'll take it with a grain of salt, but go ahead.",
          "Maybe. But the savings have to be real dollars, not time saved."]),
        ("That's fair. What if we started with a small pilot for one team, so you could prove the value "
         "before committing to anything bigger?",
         ["A pilot could work, as long as it's actually free and doesn't quietly turn into a contract.",
          "What would a pilot cost us?",
          "One team, maybe. I'd pick the one that complains the most."]),
        ("I hear you on price. Can I ask what you'd be comparing it against? Sometimes it's a different scope.",
         ["Mostly against doing nothing, to be honest. Doing nothing is free.",
          "{competitor} quoted us less, but I'll admit I don't know if it covered the same things.",
          "Against what we spend now, which is close to zero."]),
        ("Totally understand budgets are tight. If I could show you it pays for itself in under six months, "
         "would that change the conversation?",
         ["If you can actually show that with our numbers, then yes, it would.",
          "Everybody says that. Show me a customer who can prove it.",
          "It might. But the budget still doesn't exist until {quarter}."]),
        ("We do have a starter tier at {low_price}. It covers the basics, and you can upgrade later.",
         ["That's more like it. What's missing from the starter tier?",
          "Cheaper, sure, but then I'm paying for upgrades a year from now.",
          "Okay, that's at least in the range I could approve myself."]),
        ("Makes sense. Just so I'm clear, is it the total cost, or that it's not in this year's budget?",
         ["Both, honestly. But mostly the budget.",
          "It's the total. Even with budget, I couldn't justify that much.",
          "It's not in the budget. If it were, we could talk."]),
    ],
    "timing": [
        ("Makes sense. When things calm down after {your_busy}, would it help to put fifteen minutes on the "
         "calendar now so it doesn't slip?",
         ["Fine. Put something in for {month} and I'll see if I can keep it.",
          "I'd rather you just call me then. My calendar is a mess.",
          "Okay, but expect me to move it at least once."]),
        ("I get it. A lot of our customers actually start during their busiest stretch, because that's when "
         "the pain is worst. But I don't want to push. When would be better?",
         ["After {month}. Realistically.",
          "Honestly, probably {quarter}.",
          "I don't know. Ask me again after {busy}."]),
        ("Understood. Would it be okay if I sent a short overview now, so you have it when the timing is right?",
         ["Sure, send it. No promises I'll read it before {month}.",
          "That's fine. Keep it short.",
          "Okay. Just don't follow up every two days."]),
        ("That's fair. Just so I understand, is it the timing of a rollout, or the timing of even having "
         "a conversation?",
         ["The rollout. I can talk, I just can't launch anything.",
          "Both, honestly. I barely have time for this call.",
          "The rollout, mostly. If it took zero effort from my team, maybe it'd be different."]),
        ("No problem at all. Should I reach back out in {month}, or is there a better month for you?",
         ["{month} works. Put it on your calendar, not mine.",
          "Make it a bit later than that, just to be safe.",
          "Sure, {month} is fine."]),
    ],
    "competitor": [
        ("That's great, {competitor} is a solid product. A lot of our customers came from {competitor}, usually "
         "because of {pain}. Is that something you've run into?",
         ["Sometimes, yeah. But not enough to go through a switch.",
          "Not really. {competitor} handles that fine for us.",
          "Funny you mention it. That's come up a couple of times lately."]),
        ("Makes sense. I'm not asking you to rip anything out. Out of curiosity, if you could change one thing "
         "about {competitor}, what would it be?",
         ["The price goes up every year. That's about it.",
          "Their support, probably. It takes forever to get a real person.",
          "Honestly? Nothing I'd switch over."]),
        ("Good to hear it's working. When does your agreement with {competitor} come up for renewal?",
         ["I think it's {month}, but I'd have to check.",
          "Not sure. Our {boss} handles that.",
          "We just renewed, so not for a while."]),
        ("Understood. Would you be open to a side-by-side comparison? If {competitor} comes out ahead, at least "
         "you'll know you're getting a good deal.",
         ["I don't have time for a full comparison. Give me the two or three real differences.",
          "Maybe, if it doesn't take more than an hour.",
          "Sure, send it over. But I know what {competitor} costs, so don't pad the numbers."]),
        ("Fair enough. What made you choose {competitor} originally?",
         ["It was the cheapest at the time, honestly.",
          "Our {boss} picked it before I got here.",
          "Someone at another {company_noun} recommended it, and it's been fine."]),
    ],
    "authority": [
        ("That's helpful to know. What do you think your {boss} would care most about if you brought this up?",
         ["Cost, first and last.",
          "Whether it actually saves time or just creates more reports.",
          "Risk. Our {boss} hates changing anything that works."]),
        ("Understood. Would it make sense to set up a short call with both of you, so you don't have to relay "
         "everything?",
         ["I can ask, but getting time with our {boss} is tough.",
          "Maybe. Send me a couple of times and I'll check.",
          "Let me feel it out first. I don't want to waste anyone's time."]),
        ("Thanks. I can put together a one-page summary you could forward. What should it focus on?",
         ["Cost and payback. Keep it to one page.",
          "What it replaces and what it costs. Nothing else.",
          "Focus on {pain}. That's the part they'd care about."]),
        ("Got it. What does the approval process usually look like for something like this?",
         ["I write a request, finance reviews it, and {committee} signs off. It takes about a month.",
          "Honestly, it's whatever our {boss} decides that week.",
          "Anything over {amount} needs three quotes and a sign-off. So you'd be one of three."]),
        ("Appreciate that. Setting the approval aside for a second, do you personally think this is worth "
         "looking at?",
         ["Personally? Maybe. But my opinion doesn't pay the bill.",
          "I think it's worth a look, yes. That doesn't mean it'll get approved.",
          "Not yet. You haven't told me anything I can take to them."]),
    ],
    "no_need": [
        ("Fair enough. Can I ask how long it takes your team to deal with {topic} in a typical week?",
         ["A few hours, maybe. I've never really added it up.",
          "Not much. Maybe an hour.",
          "More than I'd like to admit, if I'm honest."]),
        ("That's possible. Most of the {industry_plural} we work with felt the same until they added up the "
         "hours lost to {pain}. Would it be worth a quick check?",
         ["I doubt it, but go ahead and show me.",
          "Fine, but if the math doesn't work, we're done.",
          "Maybe. What would you need from me for that?"]),
        ("Understood. Just out of curiosity, what happens when the person who manages {topic} is out sick?",
         ["Then it waits until they're back.",
          "Then it doesn't get done. Okay, fair point.",
          "Someone else covers it, badly."]),
        ("Makes sense. If nothing's broken, I don't want to waste your time. Can I ask one question before I go?",
         ["Go ahead. One question.",
          "Sure, quickly.",
          "Fine. Make it count."]),
        ("Got it. Where do you see {company} in two or three years? Would {process} still hold up at that size?",
         ["Bigger, hopefully. I guess we'd have to revisit it then.",
          "Probably about the same size. We're not trying to grow fast.",
          "Fair point. It'd probably start to creak."]),
    ],
    "bad_experience": [
        ("I'm sorry to hear that. What went wrong, if you don't mind me asking?",
         ["They sold us features that didn't exist yet and kept saying they were on the roadmap.",
          "Implementation dragged on for months, and then the person who sold it to us left.",
          "Nobody on our team used it, and the vendor didn't lift a finger to fix that."]),
        ("That's frustrating, and honestly it's common. That's why we put implementation milestones in the "
         "contract. If we miss them, you can walk away.",
         ["In writing? That would actually make a difference.",
          "Everyone says that until something goes wrong.",
          "What exactly counts as a missed milestone?"]),
        ("I appreciate you telling me. Would it help to talk to one of our customers who'd been burned before, "
         "too?",
         ["That might actually help. Someone who isn't on your payroll.",
          "Sure, set it up. I'll have questions.",
          "Maybe. I'd rather pick the customer myself."]),
        ("Understood. What would a vendor need to do differently for you to trust them again?",
         ["Tell me the truth about how long things take.",
          "Answer the phone when something breaks. That's honestly it.",
          "Let me leave if it doesn't work, without a penalty."]),
        ("That's fair. Our pricing is one number, no add-ons, and I'm happy to put that in writing.",
         ["Put that in writing and we can keep talking.",
          "That's the first time I've heard that. I'll believe it when I see the invoice.",
          "Good. What is the number?"]),
    ],
    "contract": [
        ("Got it. When does the contract end? I'd rather talk a few months ahead of that than right after you "
         "renew.",
         ["{month}, I think.",
          "Not until {month}. Call me then.",
          "I'd have to check with our {boss}. Sometime next year."]),
        ("Makes sense. Some customers run us alongside their current tool for the last few months of the "
         "contract, so the switch is seamless. Would that be interesting?",
         ["Paying for two systems at once? That's a hard no.",
          "Interesting, but that sounds like double the work for my team.",
          "Maybe for the last month or so. Not longer."]),
        ("Understood. Do you know if it auto-renews? A lot of people find out too late.",
         ["Good question. I'm honestly not sure.",
          "It does, and I think the notice period is ninety days.",
          "I don't know, and now I'm a little worried about it."]),
        ("No problem. Would it make sense to do a quick comparison now, so you have options when renewal comes "
         "around?",
         ["Sure, but don't expect anything to happen before {month}.",
          "Okay, as long as you understand we can't move yet.",
          "Fine. Send it and I'll file it for renewal time."]),
        ("We do month-to-month after the first year, so you're never locked in with us. Worth keeping in mind "
         "for {month}?",
         ["Month to month is nice. Remind me closer to {month}.",
          "That's good to know. Most vendors want three years.",
          "Noted. That might actually matter at renewal."]),
    ],
    "security": [
        ("Great question. We're SOC 2 Type II certified, and all data is encrypted at rest and in transit. "
         "I can send over our security packet today.",
         ["Send it over. Our IT team will tear it apart, just so you know.",
          "Good. That gets you past the first hurdle.",
          "Fine. And what about {rule}?"]),
        ("Totally understand. We go through security reviews all the time. Who on your team should get our "
         "completed questionnaire?",
         ["Send it to me and I'll forward it to IT.",
          "Our IT lead. I'll get you the address.",
          "Hold off until I know this is worth their time."]),
        ("That's important, and we take it seriously. All data stays in US data centers, and we sign data "
         "processing agreements as standard.",
         ["That's a relief. The last vendor fought us on that.",
          "Okay. Can you put that in the proposal?",
          "Good. Do you use subcontractors who can see our data?"]),
        ("Fair. Would it help if our security lead got on a call with your IT team directly?",
         ["That would help. They won't take my word for it.",
          "Maybe later. Let's see if this is even a fit first.",
          "Sure, but they'll want the documentation first."]),
        ("We work with a number of {industry_plural}, so questions about {rule} come up a lot. "
         "I can walk you through how we handle it.",
         ["Please do. That's the part that'll make or break this.",
          "Okay. Start with where the data lives and who can see it.",
          "Alright, but I'll need it in writing too."]),
    ],
    "implementation": [
        ("That's a common worry. We handle the data migration ourselves, and most customers your size are live "
         "in about {rollout_weeks} weeks.",
         ["I'll believe {rollout_weeks} weeks when I see it.",
          "If you do the migration, that changes things.",
          "What do you need from my side during those weeks?"]),
        ("Understood. You'd get a dedicated onboarding specialist, and we estimate about two hours a week of "
         "your team's time during setup.",
         ["Two hours a week I can probably manage.",
          "Two hours sounds optimistic. What's the real number?",
          "A dedicated person for how long? Just the setup, or after too?"]),
        ("It works with {your_system} out of the box. No custom work needed.",
         ["Good. That was going to be a dealbreaker.",
          "Out of the box, or out of the box after a consulting fee?",
          "Okay. Can you show me that working in a demo?"]),
        ("Totally fair. What if we scoped a rollout for just one location first?",
         ["One location I could live with.",
          "That's more reasonable. Which one would you suggest?",
          "Maybe. But then I'm doing two rollouts instead of one."]),
        ("We run the training sessions for your {users} ourselves, and they're recorded for anyone who misses "
         "them.",
         ["Recorded is good. Half of them won't show up live.",
          "That helps. My {users} are not patient with new software.",
          "Okay. How long are the sessions?"]),
    ],
    "send_email": [
        ("Happy to. So I send something relevant, what's the one thing you'd want to know?",
         ["What it costs. That's it.",
          "How long it takes to set up.",
          "Why you're different from the other five companies that emailed me this week."]),
        ("Sure thing. What's the best email address for you? And would it be alright if I followed up on "
         "{weekday}?",
         ["It's on our website. And {weekday} is fine, I guess.",
          "Use the general inbox, someone will get it to me. Don't follow up before {weekday}.",
          "I'll text it to you. And sure, {weekday}."]),
        ("Will do. Just so I don't send you a generic brochure, can I ask one quick question?",
         ["One. Go.",
          "Quickly, please.",
          "Sure, what is it?"]),
        ("Of course. I'll keep it short. Is there anyone else I should copy?",
         ["Copy our {boss}. Might as well.",
          "No, just me.",
          "Copy our office manager. They deal with this stuff too."]),
        ("I can do that. Most people tell me the email gets buried, though. Could we pick a time now instead?",
         ["Fine. {weekday}, first thing, fifteen minutes.",
          "No. Email first, then we'll see.",
          "Nice try. Send the email."]),
    ],
    "busy": [
        ("Understood, I'll be quick. We help {industry_plural} {benefit}. Is that worth a two-minute "
         "conversation, or should I let you go?",
         ["Go ahead, two minutes.",
          "Let me go, but you can call back next week.",
          "You've got two minutes. Use them well."]),
        ("Yes, it's a sales call, and I'll respect your time. Can I ask one question, and if it's not relevant, "
         "I'll hang up?",
         ["Alright, one question.",
          "Fine. Shoot.",
          "Go ahead, but I'm not promising anything."]),
        ("Fair question. I'm calling because {trigger}. Thirty seconds?",
         ["Okay, thirty seconds. Go.",
          "That's a stretch, but fine. Thirty seconds.",
          "Alright, the clock is running."]),
        ("I'm sorry to catch you at a bad time. When would be better for a five-minute call?",
         ["Try me {weekday} morning.",
          "Honestly, email is better for me.",
          "After {month}. Seriously."]),
        ("No problem. I'm {rep} with {vendor}, and we work on {topic}. Can I call you back later this week?",
         ["Sure, {weekday} afternoon.",
          "You can try. No promises I'll pick up.",
          "Fine. Later this week."]),
    ],
}

ANSWERS = {
    "pricing": [
        "Sure. For about {seats} {units}, you'd be looking at roughly {annual} a year, including onboarding "
        "and support.",
        "It's {price}, with no setup fee if you sign this quarter. For a company your size that usually lands "
        "around {annual} a year.",
        "Ballpark, {annual} a year for your size. I can get you an exact quote once I know a bit more.",
    ],
    "onboarding": [
        "Most customers your size go live in {rollout_weeks} weeks. We do the setup and data migration, and "
        "your team just needs to show up for two training sessions.",
        "You'd get a dedicated onboarding manager. Week one is setup, week two is training, and after that "
        "it's mostly fine-tuning.",
        "We do almost all of the work. Realistically, you'd spend a few hours a week with us for about a month.",
    ],
    "references": [
        "Yes, we work with several {industry_plural}. The closest example is a company in {region} that saw "
        "{result} in the first six months.",
        "Absolutely. I can connect you with two customers in {sector}, and you can ask them whatever you want.",
        "Our typical customer sees {result}. I'll send you a case study that shows exactly how.",
    ],
    "trial": [
        "We offer a thirty-day trial with your own data, and contracts are month to month after the first year.",
        "You can start with one team for ninety days. If it doesn't work, you walk away and owe nothing.",
        "There's a pilot option. Small scope, fixed price, and you decide afterwards whether to expand.",
    ],
    "integration": [
        "Yes, there's a built-in connection to {your_system}. Most customers set it up in an afternoon.",
        "It works alongside {your_system}, so nobody has to change how they work there.",
        "We integrate with {your_system} directly, and our team sets it up for you during onboarding.",
    ],
    "support": [
        "You'd have a named account manager, plus phone and chat support during business hours.",
        "Phone support is included, and urgent issues are covered around the clock.",
        "You'd get me as your main contact, plus a support team that answers within an hour on average.",
    ],
    "how_it_works": [
        "Sure. In short, we help you {benefit}. Your team logs in, sees everything in one dashboard, "
        "and we take care of the setup.",
        "It's pretty simple. We connect to what you already use, and within a few weeks you'd see where the "
        "time is going. Most customers get {result}.",
        "Day to day, your {users} would use a simple app, and you'd get a weekly report. That's really it.",
    ],
    "difference": [
        "Good question. The biggest difference is support: you get a named person, not a ticket queue. "
        "And our pricing doesn't jump at renewal.",
        "In one sentence: we're built for companies your size, so you're not paying for enterprise features "
        "you'll never use.",
        "Honestly, {competitor} is good. Where we win is setup time "
        "and the fact that we handle migration for you.",
    ],
}

CLOSES = [
    "Would you be open to a twenty-minute demo next week?",
    "How about this: I'll send over a short summary today, and we put fifteen minutes on the calendar for "
    "{weekday} to go through it. Does that work?",
    "What would the next step look like on your end?",
    "If I could get you a trial account by Friday, would you and your team actually try it?",
    "Can we get your {boss} on a short call next week?",
    "Based on what you've told me, I think it's worth a closer look. Can I send a calendar invite for {weekday}?",
    "I don't want to take more of your time today. Would a short follow-up call on {weekday} be reasonable?",
]

# --------------------------------------------------------------------------
# Persona (system prompt)
# --------------------------------------------------------------------------

# Each persona trait's situation: the persona's sentence, and the same fact in the prospect's own words,
# which the prospect often says when it raises that objection (STATE_SITUATION_SHARE): the data shows the
# bot using its persona's facts, so that a fine-tune learns to.
SITUATIONS = {
    "price": [("Your budget is frozen until {quarter}.", "Our budget is frozen until {quarter}."),
              ("Money is tight after a rough year, and every new expense gets questioned.",
               "Money is tight after a rough year, and every new expense gets questioned.")],
    "timing": [("You're heading into {your_busy} and have no bandwidth for new projects.",
                "We're heading into {busy}, and I have no bandwidth for new projects."),
               ("You're in the middle of {project} and everything else is on hold.",
                "We're in the middle of {project}, and everything else is on hold.")],
    "competitor": [("You already use {competitor} and are mostly satisfied with it.",
                    "We already use {competitor}, and we're mostly satisfied with it.")],
    "contract": [("You're locked into a contract with {competitor} until {month}.",
                  "We're locked into a contract with {competitor} until {month}.")],
    "authority": [("Any purchase over {amount} needs approval from your {boss}.",
                   "Any purchase over {amount} needs approval from our {boss}."),
                  ("You can recommend vendors, but {your_committee} makes the final decision.",
                   "I can recommend vendors, but {committee} makes the final decision.")],
    "no_need": [("You think your current setup ({process}) works well enough.",
                 "What we have now works well enough: {process}.")],
    "bad_experience": [("You were burned by a previous {vendor_kind} that overpromised and underdelivered.",
                        "We were burned by a previous {vendor_kind} that overpromised and underdelivered.")],
    "security": [("Your company is strict about {rule}, and every new vendor needs a security review.",
                  "We're strict about {rule}, and every new vendor needs a security review.")],
    "implementation": [("Your team is small and stretched thin, and you worry about the effort of setting up "
                        "anything new.", "We're {size} people and stretched thin. Setting up anything new is a "
                        "lot of effort for us.")],
    "send_email": [("You get a lot of cold calls and usually try to get reps off the phone with "
                    "\"send me an email\".", "I get a lot of cold calls. Send me an email and I'll look at it.")],
}
STATE_SITUATION_SHARE = 0.7
PERSONA_TEMPLATES = [
    "You are {first} {last}, {title} at {company}, a {size}-person {company_noun} in {location}. {situation} "
    "{tone_desc} A sales rep named {rep} from {vendor} is contacting you about {product_long}. "
    "Stay in character as the prospect.",
    "Roleplay as {first} {last}, the {title} of {company}, {a_company_noun} with {size} employees in {location}. "
    "{situation} {tone_desc} The user is {rep}, a sales rep from {vendor} selling {product_long}. "
    "Never break character; raise realistic objections and only warm up if the rep earns it.",
    "You are playing a prospect in a sales training call. Your name is {first} {last}, and you are the "
    "{title} at {company}, {a_company_noun} with about {size} people in {location}. {situation} {tone_desc} "
    "The rep ({rep}, {vendor}) sells {product_long}. Stay in character and answer as {first} would.",
]

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
    product = rng.choice(PRODUCTS)
    industries = [i for i in INDUSTRIES if product["industries"] is None or i["name"] in product["industries"]]
    industry = rng.choice(industries)
    company_noun, suffix = rng.choice(industry["companies"])
    title = rng.choice(industry["titles"])
    size = rng.choice(COMPANY_SIZES)
    units, per_phrase, low, high, ratio = product["unit"]
    seats = max(2, round(size * ratio))
    step = 1 if high <= 20 else 5
    unit_price = rng.randrange(low, high + 1, step)
    sc = dict(
        first=rng.choice(FIRST_NAMES), last=rng.choice(LAST_NAMES), title=title,
        company=f"{rng.choice(COMPANY_STEMS)} {suffix}", company_noun=company_noun,
        a_company_noun=("an " if company_noun[0] in "aeiou" else "a ") + company_noun,
        small_size=size if size < 100 else None,
        sector=industry["sector"], industry_plural=industry["plural"], size=size,
        location=rng.choice(LOCATIONS), region=rng.choice(LOCATIONS),
        busy=industry["busy"], rule=industry["rule"], data=industry["data"],
        boss=rng.choice(industry["bosses"]), committee=rng.choice(COMMITTEES),
        amount=rng.choice(APPROVAL_AMOUNTS),
        product_long=product["long"], topic=product["topic"],
        vendor=rng.choice(VENDORS), rep=rng.choice(REP_NAMES), competitor=rng.choice(product["competitors"]),
        users=product["users"], system=rng.choice(product["systems"]) if product["systems"] else None,
        process=product["process"],
        pain=product["pain"], benefit=product["benefit"], result=product["result"],
        units=units, unit_noun=units[:-1], seats=seats,
        price=f"{money(unit_price)} {per_phrase}",
        low_price=f"{money(max(low // 2, 1))} {per_phrase}",
        annual=money(unit_price * seats * 12),
        month=rng.choice(MONTHS), quarter=rng.choice(QUARTERS), weekday=rng.choice(WEEKDAYS),
        tenure=rng.choice(TENURES), years=rng.choice(YEARS), contract_years=rng.choice(CONTRACT_YEARS),
        rollout_weeks=rng.choice(ROLLOUT_WEEKS), project=rng.choice(PROJECTS), trigger=rng.choice(TRIGGERS),
        tone=rng.choice(list(TONE_DESCRIPTIONS)),
        vendor_kind=product["vendor_kind"],
        objection_types=[k for k in OBJECTIONS if k not in product["skip"] and k != "busy"],
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
        text = rng.choice(TONE_OPENERS[tone]) + " " + text
    elif mode == "objection" and roll < 0.45:
        text = rng.choice(TONE_LEAD_INS[tone]) + lower_first(text)
    if mode in ("objection", "bridged") and rng.random() < 0.25:
        text += " " + rng.choice(TONE_CLOSERS[tone])
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
    return pick(rng, OBJECTIONS[kind], sc, used)


def objection_line(rng, sc, kind, used, bridge=False, stack=False):
    """A prospect objection of `kind`, optionally bridged from the rep's last point and stacked with a second."""
    text = objection(rng, sc, kind, used)
    if bridge:
        text = connect(rng, BRIDGES, text)
    if stack:
        second = rng.choice([k for k in STACKABLE if k != kind and k in sc["objection_types"]])
        text += " " + connect(rng, STACKERS, pick(rng, OBJECTIONS[second], sc, used))
    return fill(decorate(rng, sc, text, "bridged" if bridge else "objection"), sc)


def handle_line(rng, sc, kind, used):
    """The rep's response to an objection of `kind`, plus the prospect replies that fit it."""
    options = [h for h in HANDLES[kind] if fields(h[0]) <= sc["available"] and h[0] not in used]
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
        text += " " + connect(rng, AFTER_REPLY, objection(rng, sc, next_kind, used))
    return fill(text, sc)


def question_topics(sc, traits):
    """Question topics the prospect can ask about, given the scenario and persona traits."""
    topics = [t for t in QUESTIONS if any(fields(q) <= sc["available"] for q in QUESTIONS[t])]
    if not {"competitor", "contract"} & set(traits):
        topics.remove("difference")
    return topics


def opens_with_question(template):
    """True if the template's first sentence is a question."""
    ends = [i for i in (template.find("."), template.find("?")) if i != -1]
    return bool(ends) and min(ends) == template.find("?")


def question_line(rng, sc, topic, used, bridge=False):
    """A prospect question about `topic`; bridged questions must open with the question itself."""
    templates = [q for q in QUESTIONS[topic] if opens_with_question(q)] if bridge else QUESTIONS[topic]
    text = pick(rng, templates, sc, used)
    if bridge:
        text = connect(rng, BRIDGES, text)
    return fill(decorate(rng, sc, text, "bridged" if bridge else "question"), sc)


def discovery_exchange(rng, sc, traits, used):
    """A rep discovery question and the prospect's answer template (unfilled).

    Answers stay consistent with whether the persona uses a competitor.
    """
    group = rng.choice([g for g in DISCOVERY if g not in used])
    used.add(group)
    questions, answers = DISCOVERY[group]
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
    pool = rng.choices([AGREE, OBJECTIONS["send_email"], DEFER, DECLINE], weights=weights)[0]
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
        rep = rep_line(rng, sc, OPENERS + COLD_CHECK_OPENERS, used)
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
        rep = rep_line(rng, sc, ANSWERS[topic], used)
        roll = rng.random()
        if roll < 0.35:
            bot = simple_line(rng, sc, SOFT_POSITIVE, used)
        elif roll < 0.6:
            bot = question_line(rng, sc, rng.choice([t for t in topics if t != topic]), used, bridge=True)
        elif roll < 0.85:
            bot = objection_line(rng, sc, rng.choice(kinds), used, bridge=True)
        else:
            bot = simple_line(rng, sc, AGREE, used)
    else:
        rep = rep_line(rng, sc, CLOSES, used, named=True)
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
    chosen = {t: rng.choice(SITUATIONS[t]) for t in traits}
    sc["own_words"] = {t: said for t, (_, said) in chosen.items()}
    situation = " ".join(fill(persona, sc) for persona, _ in chosen.values())
    return rng.choice(PERSONA_TEMPLATES).format(situation=situation, tone_desc=TONE_DESCRIPTIONS[sc["tone"]], **sc)


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
                openers = OPENERS if assistant_first else OPENERS + COLD_CHECK_OPENERS
                text, rep_move = rep_line(rng, sc, openers, used), "opener"
            elif n_turns - i == 2 and n_turns >= 6 and bot_move not in ("objection", "question"):
                text, rep_move = rep_line(rng, sc, CLOSES, used, named=True), "close"
            elif bot_move == "objection":
                (text, replies), rep_move = handle_line(rng, sc, bot_key, used), "handle"
            elif bot_move == "question":
                text, rep_move = rep_line(rng, sc, ANSWERS[bot_key], used), "answer"
            else:
                (text, answer), rep_move = discovery_exchange(rng, sc, traits, used), "discovery"
        elif i == 0:
            text, bot_move = fill(rng.choice(PHONE_ANSWERS), sc), "phone"
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
                answer += " " + connect(rng, AFTER_REPLY, objection(rng, sc, bot_key, used))
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
            text, bot_move = simple_line(rng, sc, SOFT_POSITIVE, used), "positive"
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

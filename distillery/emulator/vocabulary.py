"""Word lists and sentence templates for the emulator's answers.

Kept apart from :mod:`.text` so the generator stays readable and the lists can grow without
touching logic. Templates use slots: ``{T}`` a word of the prompt, ``{N}`` a noun, ``{P}`` a
plural noun, ``{A}`` an adjective, ``{V}`` a verb in the third person, ``{B}`` a verb in its base
form, ``{R}`` an adverb, ``{C}`` a cardinal number word. Nouns and verbs are regular, so plurals
and third persons are derived by rule.
"""

from __future__ import annotations


def _words(block: str) -> tuple[str, ...]:
    """A whitespace-separated block as a tuple: long lists stay readable, one screen each."""
    return tuple(block.split())


NOUNS = _words(
    """
account action advantage agent algorithm amount answer approach area argument aspect assumption
audience balance barrier baseline batch benchmark benefit boundary budget buffer cache candidate
category change channel choice claim client cluster column comment community comparison
component concept condition constraint context contract contribution control cost counter
customer cycle dashboard dataset deadline decision default definition delay demand design detail
developer device difference dimension direction document domain draft driver effect element
engine error estimate event example exception experiment expert factor failure feature field
figure filter format foundation fragment framework function gap goal gradient group guideline
habit handler idea image impact improvement incident index input insight instance
interface interval issue item iteration journey kernel label language layer lesson level limit
list loop machine manager margin market measure mechanism memory method metric milestone model
module moment network node number object observation operation opinion option order outcome
output owner package parameter partner pattern period permission phase pipeline plan platform
point policy pool position practice prediction preference pressure principle priority problem
product profile program project prompt property proposal protocol prototype provider purpose
quality query question queue range rate reader reason record region release report request
requirement resource response result review risk role rule sample scale schedule schema scope
score screen section sector segment sequence server service session setting signal skill
snapshot solution source space standard step story strategy stream structure student style
subject summary system table target task teacher team technique template tension term test
theme theory thread threshold ticket token tool topic trade trend trial type unit update user
value variable vector version view volume weight window worker workflow year
"""
)

ADJECTIVES = _words(
    """
accurate active actual additional adequate alternative annual apparent appropriate automatic
available basic brief broad careful central certain cheap clean clear common compact complete
complex concrete consistent constant correct costly critical crucial current dedicated deep
default definite detailed direct distinct dominant durable dynamic early efficient elegant
empty entire equal essential evident exact excessive existing explicit external fair familiar
fast favourable final firm fixed flexible formal fragile free frequent fresh full general
genuine global gradual helpful hidden honest huge ideal implicit important independent indirect
inexpensive initial internal large late lean legitimate light likely limited linear literal
local logical long loose main major manual marginal minimal minor modern modest moderate narrow
native natural necessary neutral new noisy nominal normal notable obvious occasional open
optimal optional ordinary original overall parallel partial particular passive persistent
plain plausible popular portable positive possible practical precise predictable primary
private productive proper public quick quiet random rapid rare raw realistic reasonable recent
redundant regular relative relevant reliable remote repeated robust rough routine safe scarce
secondary secure selective sensible separate sequential serious severe shared short silent
simple single slow small smooth solid sound sparse special specific stable static steady
strict strong structured subtle sudden sufficient suitable superficial synthetic technical
temporary thorough tight total traditional transparent typical unclear uniform unique unusual
useful valid variable vast verbose visible vital volatile weak wide
"""
)

VERBS = _words(
    """
absorb accept adapt add adjust affect allow alter amplify analyse anchor answer apply assemble
assess assign assist avoid balance block boost break build calculate capture carry check
clarify collect combine compare compile complement compress confirm connect consider contain
contrast convert correct cover create decide deliver depend describe detect determine develop
distort divide document drive enable encode encourage enforce enhance ensure establish estimate
evaluate expand explain expose extend extract favour filter follow forecast frame gather
generate guide handle highlight identify ignore illustrate implement improve include increase
indicate inform inspect limit link maintain manage measure merge mirror model monitor motivate
narrow normalise observe obtain offer organise outline outweigh overlook perform permit persist
predict prefer prepare preserve prevent process produce protect provide publish question rank
reach record reduce refine reflect reinforce reject release remove repair repeat replace report
represent require resolve restrict retain reveal review reward schedule score select separate
serve shape share shift signal simplify sketch solve sort split stabilise store strengthen
structure suggest summarise support sustain test track trade transform trigger tune underline
update validate verify weigh widen yield
"""
)

ADVERBS = _words(
    """
accordingly actually already always carefully certainly clearly closely consistently correctly
deliberately directly easily effectively efficiently entirely equally especially eventually
exactly explicitly fairly finally firmly frequently fully generally gradually greatly heavily
honestly immediately implicitly increasingly indirectly initially largely later likely mainly
manually merely mostly naturally nearly necessarily normally notably obviously occasionally
often openly partly periodically plainly possibly precisely predictably primarily probably
properly quickly quietly rarely readily reasonably regularly reliably repeatedly roughly safely
seldom separately seriously significantly silently simply slightly slowly smoothly sometimes
steadily strictly strongly substantially successfully suddenly sufficiently surely
systematically thoroughly typically ultimately usually visibly widely
"""
)

NUMBERS = _words("two three four five six seven eight nine ten twelve twenty several")

OPENERS = (
    "Sure.",
    "Good question.",
    "Here is a short answer.",
    "Let me explain.",
    "In brief:",
    "Certainly.",
    "There are a few things to consider.",
    "Short version first.",
    "It depends on the {T}.",
    "Here is how I would think about {T}.",
)

CLOSERS = (
    "In short, the {T} {V} the {N}.",
    "Overall, a {A} {N} is the safest choice.",
    "Hope this helps.",
    "Let me know if you want more detail on {T}.",
    "That is the main idea behind {T}.",
    "The rest follows from the {A} {N}.",
)

SENTENCES = (
    "The {A} {N} {V} the {T} {R}.",
    "{T} {V} a {A} {N} when the {N} is {A}.",
    "A {A} approach to {T} {V} every {N}.",
    "Consider how the {N} {V} {T}.",
    "Most {P} {B} the {T} before the {N} {V} it.",
    "In practice, {T} and the {N} {B} together.",
    "When the {N} is {A}, the {T} {R} {V} the {N}.",
    "This is why {T} {V} {A} {P}.",
    "The {N} of the {T} {V} how {A} the {N} becomes.",
    "You can {B} the {T} by keeping the {N} {A}.",
    "{C} {P} usually {B} the {T}.",
    "Without a {A} {N}, the {T} {V} {R}.",
    "One {A} {N} is enough to {B} the {T}.",
    "The {T} {R} {V} the {A} {N}, not the {N}.",
    "If the {N} {V}, {B} the {T} first.",
    "Teams that {B} {T} {R} {B} fewer {P}.",
    "A {N} {V} the {N}, and the {T} {V} the rest.",
    "Think of the {T} as a {A} {N} that {V} {P}.",
    "There are {C} {A} {P} to {B} here.",
    "The main {N} is that {T} {V} the {N}.",
    "Every {N} {V} its own {T}.",
    "It helps to {B} the {N} and {B} the {T}.",
    "The {T} is {A}, but the {N} is {A}.",
    "Because the {N} {V} the {T}, the {P} stay {A}.",
    "Unlike the {N}, the {T} {V} {A} {P}.",
    "A {A} {T} rarely {V} the {N}.",
    "Start with the {T}, then {B} the {N}.",
    "The {A} part is how the {T} {V} each {N}.",
    "Even a {A} {N} {V} the {T} {R}.",
    "{T} matters because it {V} the {N}.",
    "Over time, the {N} {V} the {T} and the {P} {B}.",
    "Ask whether the {N} really {V} the {T}.",
)

BULLETS = (
    "{T}: {B} the {A} {N}.",
    "Keep the {N} {A}.",
    "{B} the {T} {R}.",
    "Check that the {N} {V} the {T}.",
    "Avoid a {A} {N}.",
    "Prefer {A} {P} over {A} ones.",
    "{B} {C} {P} at most.",
    "Watch the {T} and the {N}.",
)

LIST_INTROS = (
    "A few points:",
    "Steps to follow:",
    "Things to check:",
    "Key ideas about {T}:",
    "In order:",
)

STOPWORDS = frozenset(
    _words(
        """
    about above after again against also among another anything around because been before
    being below between both cannot could does doing done down during each either else even
    every from further give given good have having here hers herself himself however into
    itself just keep know like made make many more most much must myself need only other ought
    ours ourselves over please rather really same shall should some such than that their
    theirs them themselves then there these they thing things this those though through thus
    under until upon very want well were what when where whether which while whom whose will
    with within without would write your yours yourself yourselves explain describe tell
    """
    )
)

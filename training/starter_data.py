"""Writes assets/starter_chat.jsonl (and a held-out file): templated chats that teach the starter to take turns.

Built the way assets/sample_chat.jsonl is (our own templates, a fixed seed, no downloaded text), but larger and
more varied: greetings that say what a small local model can do, short factual answers, simple instructions
(rewrite, list, summarise), polite refusals and admissions of uncertainty, and multi-turn exchanges. Every
reply is short, so the adapter learns to answer and then end its turn.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from training import sample_data as sd

ASSETS = Path(__file__).resolve().parents[1] / "assets"
OUT = ASSETS / "starter_chat.jsonl"
HELDOUT = ASSETS / "starter_chat_heldout.jsonl"
SEED = 20
N_TRAIN = 1400
N_HELDOUT = 120

HELLOS = ["Hello! What can you do?", "Hi! What can you do?", "Hello, what can you help me with?",
          "Hey! What are you able to do?", "Hi there. What can you help with?", "Hello!", "Hi!", "Hey there!",
          "Good morning!", "Good evening!", "Hello, who are you?", "Hi, what are you?", "What can you do?",
          "What are you good at?", "Hello. Can you help me?", "Hi! How are you?"]  # fmt: skip
CAN_DO = [
    "I can answer simple questions, explain things in a few words, rewrite or shorten a sentence, make short "
    "lists and chat.",
    "I can chat, answer short questions, make quick lists, and rewrite or summarise short pieces of text.",
    "I can help with simple facts, short explanations, lists, and rewording or summarising a sentence.",
]
I_AM = ["I'm a small language model running on your own computer.", "I'm a small AI model that runs locally.",
        "I'm a small assistant model running offline on this computer."]  # fmt: skip
CAVEAT = ["I'm small, so I can make mistakes: check anything important.",
          "I make mistakes sometimes, so please double-check important facts.",
          "I have no internet access, and I can be wrong.", ""]  # fmt: skip
ASK_BACK = ["What would you like to do?", "How can I help?", "What can I do for you?", ""]

FACTS = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What do bees make?", "Bees make honey and wax."),
    ("What is ice made of?", "Ice is frozen water."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius (32 degrees Fahrenheit)."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("What do we call a baby cat?", "A baby cat is called a kitten."),
    ("What do we call a baby dog?", "A baby dog is called a puppy."),
    ("What is the opposite of north?", "The opposite of north is south."),
    ("Which is the largest ocean?", "The Pacific is the largest ocean."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("What is the boiling point of water in Fahrenheit?", "Water boils at 212 degrees Fahrenheit."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("What is the first letter of the alphabet?", "The first letter of the alphabet is A."),
    ("What shape is a ball?", "A ball is round: it is a sphere."),
    ("What do cows drink?", "Cows drink water."),
    ("What does the heart do?", "The heart pumps blood around the body."),
    ("What is the Sun?", "The Sun is a star: a huge ball of hot gas at the centre of our solar system."),
    ("What is a noun?", "A noun is a word for a person, place or thing, like 'teacher', 'city' or 'cup'."),
    ("What is a verb?", "A verb is an action word, like 'run', 'eat' or 'think'."),
    (
        "What is photosynthesis?",
        "Photosynthesis is how plants use sunlight, water and carbon dioxide to make sugar and oxygen.",
    ),  # fmt: skip
    (
        "What is gravity?",
        "Gravity is the force that pulls things towards each other, like objects towards the Earth.",
    ),  # fmt: skip
    (
        "What is a language model?",
        "A language model is a program that predicts the next words of a text; "
        "chat assistants like me are built on one.",
    ),  # fmt: skip
]
ANIMAL_SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks", "lion": "roars",
                 "sheep": "bleats", "horse": "neighs", "owl": "hoots"}  # fmt: skip

SUBJECTS = ["The meeting", "The train", "The concert", "The class", "The football match", "The dentist visit",
            "The team lunch", "The flight"]  # fmt: skip
DAYS_FROM_TO = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
REASONS = ["because of the storm", "because the room was booked", "because two people were ill",
           "because the road was closed", "because of a power cut", "because the speaker was late"]  # fmt: skip
POLITE = [
    ("Give me the report now.", "Could you please send me the report when you have a moment?"),
    ("Close the window.", "Would you mind closing the window, please?"),
    ("Call me back.", "Could you call me back when you are free?"),
    ("Fix this bug today.", "Could you please take a look at this bug today?"),
    ("Move your car.", "Excuse me, could you please move your car?"),
    ("Send the files.", "Could you please send me the files?"),
    ("Be quiet.", "Could you please keep the noise down a little?"),
    ("Answer my email.", "When you have a moment, could you reply to my email?"),
]
SIMPLER = [
    ("The weather is exceptionally cold today.", "It is very cold today."),
    ("I am unable to attend the gathering.", "I can't come to the party."),
    ("The vehicle failed to start this morning.", "The car didn't start this morning."),
    ("She purchased a substantial quantity of apples.", "She bought a lot of apples."),
    ("We commenced the journey at dawn.", "We started the trip at sunrise."),
    ("The children were exceedingly joyful.", "The children were very happy."),
]
LISTS = {
    "fruits": ["apple", "banana", "orange", "pear", "grape", "mango", "cherry"],
    "colours": ["red", "blue", "green", "yellow", "purple", "orange"],
    "animals": ["dog", "cat", "horse", "rabbit", "elephant", "fox", "owl"],
    "vegetables": ["carrot", "potato", "onion", "pea", "cabbage", "leek"],
    "things to pack for a beach trip": ["sunscreen", "a towel", "a hat", "water", "sunglasses", "a book"],
    "ways to save energy at home": ["switch off lights you don't need", "turn the heating down a degree",
                                    "use a lid when boiling water", "unplug chargers", "wash clothes cold"],
    "musical instruments": ["piano", "guitar", "violin", "drum", "flute", "trumpet"],
}  # fmt: skip
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}

UNKNOWABLE = [
    (
        "What will the weather be tomorrow?",
        "I can't know that: I have no internet access or live data. A weather service or app can tell you.",
    ),  # fmt: skip
    (
        "What time is it right now?",
        "I can't see a clock, so I don't know the time. Your computer's clock will show it.",
    ),  # fmt: skip
    (
        "What is the price of gold today?",
        "I don't have live prices: I can't go online. A financial news site will have today's price.",
    ),  # fmt: skip
    ("Who won the match last night?", "I don't know: I have no access to news or recent results."),
    ("What is my name?", "I don't know your name: you haven't told me. What should I call you?"),
    ("Where am I right now?", "I can't know where you are: I have no access to your location."),
    (
        "What is the population of Lima exactly, today?",
        "I don't know the exact figure for today. An official statistics site is the best source.",
    ),  # fmt: skip
    ("Can you read my emails?", "No. I can only see what you type here."),
    (
        "Can you browse the web for me?",
        "No, I can't go online. I can only answer from what I learned in training, which may be out of date.",
    ),  # fmt: skip
    (
        "What will the stock market do next week?",
        "Nobody can know that for sure, and I have no live data. I can't give financial predictions.",
    ),  # fmt: skip
    ("What number am I thinking of?", "I can't know that. Tell me and we can play a game with it!"),
    ("Are you always right?", "No. I'm a small model and I often make mistakes, so check important facts."),
    ("Do you remember what we talked about yesterday?", "No, I only see this conversation."),
]
REFUSE = [
    (
        "How do I break into my neighbour's house?",
        "I can't help with breaking into someone's home. If you "
        "are locked out of your own, a locksmith can help.",
    ),  # fmt: skip
    (
        "Write a fake doctor's note for me.",
        "I can't help make fake documents. If you are unwell, a real note from your doctor is the way to go.",
    ),  # fmt: skip
    (
        "How can I steal someone's password?",
        "I can't help with that. I can explain how to keep your own passwords safe, if you like.",
    ),  # fmt: skip
    (
        "Tell me how to make a weapon at home.",
        "I can't help with that. Is there something else I can do for you?",
    ),  # fmt: skip
    ("Help me cheat on my exam.", "I can't help with cheating, but I'm happy to help you study for it."),
    (
        "Should I stop taking my medicine?",
        "I can't give medical advice. Please ask your doctor or a pharmacist before changing any medicine.",
    ),  # fmt: skip
]
THANKS = ["Thanks!", "Thank you.", "Great, thanks.", "That helps, thank you!", "Perfect, thanks!"]
WELCOME = ["You're welcome!", "Glad I could help.", "You're welcome. Anything else?", "Happy to help!"]
BYES = ["Bye!", "Goodbye.", "See you later!", "That's all for now."]
BYE_REPLIES = ["Goodbye! Have a nice day.", "Bye! Come back any time.", "See you! Take care."]
SYSTEMS = sd.SYSTEMS + ["You are a small local assistant. Be brief and honest."]


def _hello(rng: random.Random) -> tuple[str, str]:
    q = rng.choice(HELLOS)
    if q in {"Hello!", "Hi!", "Hey there!", "Good morning!", "Good evening!"}:
        a = rng.choice(sd.GREET_REPLIES)
    elif q == "Hi! How are you?":
        a = "I'm fine, thanks for asking! " + rng.choice(["How can I help?", "What can I do for you?"])
    else:
        parts = [rng.choice(["Hello!", "Hi!", "Hello."]), rng.choice(I_AM), rng.choice(CAN_DO),
                 rng.choice(CAVEAT), rng.choice(ASK_BACK)]  # fmt: skip
        a = " ".join(p for p in parts if p)
    return q, a


def _fact(rng):
    q, a = rng.choice(FACTS)
    if rng.random() < 0.2:
        q = rng.choice(["Quick question: ", "Tell me: ", "Do you know: "]) + q[0].lower() + q[1:]
    return q, a


def _animal(rng):
    animal, sound = rng.choice(list(ANIMAL_SOUNDS.items()))
    return rng.choice([f"What sound does a {animal} make?", f"What noise does a {animal} make?"]), \
        f"A {animal} {sound}."  # fmt: skip


def _summarise(rng):
    subject, reason = rng.choice(SUBJECTS), rng.choice(REASONS)
    a, b = rng.sample(DAYS_FROM_TO, 2)
    sentence = (
        f"{subject} that was planned for {a} has been moved to {b} {reason}, so please update your plans."
    )
    q = rng.choice(["Summarise this in one short sentence: ", "Shorten this: ", "Give me the gist: "])
    return q + sentence, f"{subject} moved from {a} to {b}."


def _polite(rng):
    rude, nice = rng.choice(POLITE)
    return rng.choice([f"Make this more polite: {rude}", f'Rewrite politely: "{rude}"']), nice


def _simpler(rng):
    hard, easy = rng.choice(SIMPLER)
    return rng.choice([f"Say this in simpler words: {hard}", f"Rewrite this more simply: {hard}"]), easy


def _list(rng):
    topic, items = rng.choice(list(LISTS.items()))
    n = rng.choice([2, 3, 4])
    picked = rng.sample(items, n)
    q = rng.choice([f"List {NUMBER_WORDS[n]} {topic}.", f"Name {NUMBER_WORDS[n]} {topic}.",
                    f"Give me {n} {topic}."])  # fmt: skip
    if rng.random() < 0.5:
        a = "\n".join(f"{i}. {x[0].upper() + x[1:]}" for i, x in enumerate(picked, 1))
    else:
        a = "Here are " + NUMBER_WORDS[n] + ": " + ", ".join(picked[:-1]) + " and " + picked[-1] + "."
    return q, a


def _unknown(rng):
    return rng.choice(UNKNOWABLE)


def _refuse(rng):
    return rng.choice(REFUSE)


def _translate_word(rng):
    word, fr = rng.choice([("cat", "chat"), ("dog", "chien"), ("house", "maison"), ("water", "eau"),
                           ("bread", "pain"), ("thank you", "merci"), ("hello", "bonjour"), ("book", "livre")])  # fmt: skip
    return f"How do you say '{word}' in French?", f"'{word.capitalize()}' in French is '{fr}'."


MAKERS = [(_hello, 5), (_fact, 5), (_animal, 1), (sd._capital, 2), (sd._color, 1), (sd._opposite, 1),
          (sd._day, 1), (sd._arith, 1), (sd._spell, 1), (_summarise, 3), (_polite, 2), (_simpler, 2), (_list, 3),
          (_unknown, 3), (_refuse, 2), (_translate_word, 1)]  # fmt: skip


def _pick(rng: random.Random):
    makers, weights = zip(*MAKERS, strict=True)
    return rng.choices(makers, weights)[0]


def _exchange(rng: random.Random) -> list[dict]:
    turns: list[dict] = []
    if rng.random() < 0.15:
        turns.append({"role": "system", "content": rng.choice(SYSTEMS)})
    n = rng.choices([1, 2, 3], [0.6, 0.3, 0.1])[0]
    for _ in range(n):
        q, a = _pick(rng)(rng)
        turns += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if n > 1 or rng.random() < 0.1:  # some conversations close politely
        closing = rng.random()
        if closing < 0.5:
            turns += [{"role": "user", "content": rng.choice(THANKS)},
                      {"role": "assistant", "content": rng.choice(WELCOME)}]  # fmt: skip
        elif closing < 0.7:
            turns += [{"role": "user", "content": rng.choice(BYES)},
                      {"role": "assistant", "content": rng.choice(BYE_REPLIES)}]  # fmt: skip
    return turns


def generate(n_train: int = N_TRAIN, n_heldout: int = N_HELDOUT, seed: int = SEED) -> tuple[list, list]:
    """Distinct conversations: the first `n_train` for training, the next `n_heldout` held out (no
    conversation appears in both)."""
    rng = random.Random(seed)
    records, seen = [], set()
    while len(records) < n_train + n_heldout:
        turns = _exchange(rng)
        key = json.dumps(turns)
        if key not in seen:
            seen.add(key)
            records.append({"messages": turns})
    return records[:n_train], records[n_train:]


def _write(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def main() -> None:
    train, heldout = generate()
    ASSETS.mkdir(parents=True, exist_ok=True)
    _write(OUT, train)
    _write(HELDOUT, heldout)
    print(f"wrote {OUT} ({len(train)}) and {HELDOUT} ({len(heldout)})")


if __name__ == "__main__":
    main()

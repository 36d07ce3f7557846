"""AgentJo's output formats as a task: the llm calls that `strict_json` and `Agent.run` make, on generated schemas.

    from r1lab.tasks import get_task
    task = get_task("agentjo", agent_percent=40, test_percent=20)
    task.problems("test", n=50, seed=0)            # held-out schemas

Each problem is one `llm(system_prompt, user_prompt)` call exactly as AgentJo makes it: the prompts are
captured from AgentJo itself (an llm that records them and stops the call), never rewritten here. Kinds:
- `strict_json`: `strict_json(system_prompt, user_prompt, output_format)` on a generated schema of 1-4
  keys, each "description, type: T" or "type: T" with T in str, int, float, bool, list, dict, dict[...]
  and Enum[...], or a description alone (the talk's `{"Main Category": "Suitable for 12 year olds,
  type: str", "Sub-categories": "type: list"}` is one such schema); keys in Title Case or snake_case;
  the question is a topic, as the talk's "DeepSeek".
- `agent_subtask`: `Agent.run`'s query for the next step (Observation, Thoughts, Current Subtask,
  Equipped Function Name; AgentJo's `parse_yaml` format) for an agent given 1-3 generated functions and
  a task of 1-3 actions, some already done; the expected choice is the next action's function, or
  `end_task` when every action is done.
- `agent_inputs`: the query that follows for the chosen function's inputs (its `<name: type>` fields).
`agent_percent` of the problems are agent ones, a third of those `agent_inputs`. Not covered: Agent's
other queries (`use_llm`'s "Detailed Outcome", `reply_user`), which the talk's snippet never reaches when
the model picks the function or `end_task`.

Problem.prompt is JSON {"system": ..., "user": ...}, which the `agentjo` template renders with the model's
chat template as `r1lab.llm.make_llm` sends it. Problem.answer is a reference reply that AgentJo parses
into a complete dict of the right types: the cold start imitates it; its values come from rules (a
topic's field and related terms, numbers in the asked range, the action's arguments), plausible for
the question but not facts. strict_json references are indented JSON with the ###key### names, not the
Python dict AgentJo's template shows: strict_json parses both, and JSON is what the embedded model
already writes (its untrained replies are JSON-like), so there is less to learn. Problem.steps: one
"key: value" per key. meta["agentjo"] holds what the rewards need (r1lab/rewards/agentjo.py): the kind,
the output_format, the valid choices and the expected choice or inputs.

Held-out schemas: a problem's split is a hash of its schema, never of its question: the key set with
case and punctuation removed (strict_json), the set of functions offered (agent_subtask) or the
function's input names (agent_inputs). No test key set or function set is ever seen in training;
single keys and functions are shared (a key set is new, its words are not). Needs the PyPI package
agentjo (`pip install 'agentjo>=1.1'`).
"""
from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass

import yaml

from r1lab import R1labError
from r1lab.tasks.base import check_split, split_of
from r1lab.types import Problem

TOPICS = [  # (topic, its field, three related terms)
    ("DeepSeek", "Technology", ["Artificial Intelligence", "Language Models", "Open Source"]),
    ("Photosynthesis", "Biology", ["Chlorophyll", "Sunlight", "Glucose"]),
    ("The French Revolution", "History", ["Monarchy", "Bastille", "Republic"]),
    ("Volcanoes", "Geology", ["Magma", "Eruptions", "Tectonic Plates"]),
    ("Jazz", "Music", ["Improvisation", "Swing", "Blues"]),
    ("Chess", "Games", ["Openings", "Endgames", "Tactics"]),
    ("Black Holes", "Astronomy", ["Gravity", "Event Horizon", "Stars"]),
    ("Football", "Sports", ["Passing", "Training", "Tournaments"]),
    ("Python Programming", "Computer Science", ["Functions", "Data Types", "Libraries"]),
    ("Climate Change", "Environment", ["Greenhouse Gases", "Renewable Energy", "Sea Levels"]),
    ("The Roman Empire", "History", ["Emperors", "Legions", "Roads"]),
    ("Vaccines", "Medicine", ["Immunity", "Antibodies", "Clinical Trials"]),
    ("Baking Bread", "Cooking", ["Yeast", "Flour", "Kneading"]),
    ("Electric Cars", "Technology", ["Batteries", "Charging", "Motors"]),
    ("The Human Heart", "Biology", ["Arteries", "Blood", "Heartbeat"]),
    ("Impressionism", "Art", ["Monet", "Light", "Brushwork"]),
    ("Bitcoin", "Finance", ["Blockchain", "Mining", "Wallets"]),
    ("Rainforests", "Environment", ["Biodiversity", "Canopy", "Deforestation"]),
    ("William Shakespeare", "Literature", ["Plays", "Sonnets", "Globe Theatre"]),
    ("Quantum Computing", "Computer Science", ["Qubits", "Superposition", "Entanglement"]),
    ("Honeybees", "Biology", ["Pollination", "Hives", "Honey"]),
    ("The Moon Landing", "History", ["Apollo 11", "Astronauts", "NASA"]),
    ("Yoga", "Health", ["Breathing", "Poses", "Meditation"]),
    ("Earthquakes", "Geology", ["Faults", "Seismic Waves", "Richter Scale"]),
    ("Origami", "Art", ["Paper Folding", "Cranes", "Patterns"]),
    ("Machine Learning", "Computer Science", ["Training Data", "Neural Networks", "Models"]),
    ("Coffee", "Food", ["Beans", "Roasting", "Espresso"]),
    ("The Olympic Games", "Sports", ["Athletes", "Medals", "Host Cities"]),
    ("Dinosaurs", "Paleontology", ["Fossils", "Extinction", "Jurassic Period"]),
    ("Solar Energy", "Energy", ["Solar Panels", "Sunlight", "Electricity"]),
    ("Smartphones", "Technology", ["Touchscreens", "Apps", "Cameras"]),
    ("The Vikings", "History", ["Longships", "Explorers", "Scandinavia"]),
]
SCIENCES = {"Biology", "Geology", "Astronomy", "Computer Science", "Medicine", "Paleontology", "Energy", "Environment"}
FIELDS = sorted({field for _, field, _ in TOPICS})


def _other_fields(field: str, rng: random.Random) -> list[str]:
    options = [field] + rng.sample([f for f in FIELDS if f != field], 2)
    return sorted(options)


KEYS = {  # key -> (description, type or None, value(topic, field, related, rng))
    "Main Category": ("The broad area of the topic", "str", lambda t, f, r, g: f),
    "Title": ("A short title", "str", lambda t, f, r, g: f"An Introduction to {t}"),
    "Summary": ("One sentence about the topic", "str", lambda t, f, r, g: f"{t} is an important subject in {f.lower()}."),
    "Explanation": ("Suitable for 12 year olds", "str",
                    lambda t, f, r, g: f"{t} is about {r[0].lower()}, {r[1].lower()} and {r[2].lower()}."),
    "Quiz Question": ("A question to test a student", "str", lambda t, f, r, g: f"How is {t} related to {r[0]}?"),
    "Slogan": ("A catchy slogan", "str", lambda t, f, r, g: f"Discover {t} today!"),
    "Hashtag": ("A hashtag for social media", "str", lambda t, f, r, g: "#" + re.sub(r"\W", "", t)),
    "Fun Fact": ("An interesting fact about the topic", None, lambda t, f, r, g: f"{t} is closely linked to {r[1].lower()}."),
    "Opening Line": ("The first sentence of an essay", None, lambda t, f, r, g: f"Few subjects in {f.lower()} are as rich as {t}."),
    "Sub-categories": ("Three sub-categories", "list", lambda t, f, r, g: list(r)),
    "Keywords": ("Important words", "list", lambda t, f, r, g: [t, *r[:2]]),
    "Related Topics": ("Topics to read next", "list", lambda t, f, r, g: [r[2], r[0]]),
    "Learning Steps": ("Steps for a beginner", "list",
                       lambda t, f, r, g: [f"Read about {r[0]}", f"Study {r[1]}", f"Practise with {r[2]}"]),
    "Difficulty Level": ("From 1 to 5", "int", lambda t, f, r, g: g.randint(1, 5)),
    "Number of Sub-topics": ("How many sub-topics there are", "int", lambda t, f, r, g: 3),
    "Reading Time": ("In minutes", "int", lambda t, f, r, g: g.choice([5, 10, 15, 20, 30])),
    "Minimum Age": ("Youngest suitable reader", "int", lambda t, f, r, g: g.randint(8, 14)),
    "Confidence": ("From 0 to 1", "float", lambda t, f, r, g: round(g.uniform(0.6, 0.99), 2)),
    "Popularity Score": ("From 0 to 10", "float", lambda t, f, r, g: round(g.uniform(5.0, 9.9), 1)),
    "Hours to Learn": ("A rough estimate", "float", lambda t, f, r, g: g.choice([2.5, 5.0, 10.0, 20.0])),
    "Is Science": ("Whether the topic is a science", "bool", lambda t, f, r, g: f in SCIENCES),
    "Suitable for Children": ("Whether children can learn it", "bool", lambda t, f, r, g: True),
    "Is Technology": ("Whether it is about technology", "bool", lambda t, f, r, g: f in ("Technology", "Computer Science")),
    "Difficulty": ("How hard it is", "Enum['easy', 'medium', 'hard']", lambda t, f, r, g: g.choice(["easy", "medium", "hard"])),
    "Audience": ("Who it is for", "Enum['children', 'teenagers', 'adults']",
                 lambda t, f, r, g: g.choice(["children", "teenagers", "adults"])),
    "Details": ("Facts about the topic", "dict", lambda t, f, r, g: {"field": f, "example": r[0]}),
    "Profile": ("The topic's name and field", "dict['name', 'field']", lambda t, f, r, g: {"name": t, "field": f}),
}
FIELD_KEY = ("Field", "Which field it belongs to")      # an Enum of three fields, the right one among them
SYSTEM_PROMPTS = ["Generate {keys} for topic", "Give the {keys} of the topic", "You are a helpful teacher. Describe the topic",
                  "Describe the topic for a school project", "You are an encyclopedia. Give information about the topic"]
AGENT_KEYS = ("Observation", "Thoughts", "Current Subtask", "Equipped Function Name")
AGENTS = [("Personal Secretary", "You are a friendly assistant."), ("Travel Planner", "You help people plan their trips."),
          ("Home Helper", "You manage tasks at home."), ("Office Assistant", "You help with work tasks."),
          ("Concierge", "You are a polite hotel concierge.")]
NAMES = ["Paul", "Sally", "Anna", "Ben", "Maria", "Tom", "Lucy", "Omar", "Mei", "Ravi", "Sofia", "James"]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Rome", "Madrid", "Cairo", "Sydney", "Toronto", "Lisbon"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]


def _hour(h: int) -> str:
    return f"{h - 12 if h > 12 else h}{'pm' if h >= 12 else 'am'}"


def _appointment(g):
    h = g.randint(9, 17)
    args = {"person_name": g.choice(NAMES), "start_time": f"{h:02d}00H", "end_time": f"{h + 1:02d}00H"}
    return args, f"make me an appointment with {args['person_name']} at {_hour(h)} for 1 hour"


def _reminder(g):
    h = g.randint(7, 21)
    args = {"message": g.choice(["call mum", "buy milk", "water the plants", "pay the rent", "feed the cat"]), "time": f"{h:02d}00H"}
    return args, f"remind me to {args['message']} at {_hour(h)}"


def _alarm(g):
    h = g.randint(5, 9)
    return {"time": f"{h:02d}00H"}, f"wake me up at {_hour(h)}"


def _flight(g):
    origin, destination = g.sample(CITIES, 2)
    month, day = g.randint(1, 12), g.randint(1, 28)
    args = {"origin": origin, "destination": destination, "date": f"2025-{month:02d}-{day:02d}"}
    return args, f"book a flight from {origin} to {destination} on {MONTHS[month - 1]} {day}"


def _pick(g, phrase: str, **choices) -> tuple[dict, str]:
    """An action whose task phrase states its arguments as they are: one value drawn for each input."""
    args = {name: g.choice(values) for name, values in choices.items()}
    return args, phrase.format(**args)


FUNCTIONS = {  # name -> (description with <input: type> fields, Random -> (args, task phrase), subtask, outcome)
    "make_appointment": ("Makes an appointment with <person_name: str> from <start_time: str> to <end_time: str>. Time is in xxxxH",
                         _appointment, "Make an appointment with {person_name} from {start_time} to {end_time}",
                         "Appointment made with {person_name} from {start_time} to {end_time}"),
    "set_reminder": ("Sets a reminder to <message: str> at <time: str>. Time is in xxxxH", _reminder,
                     "Set a reminder to {message} at {time}", "Reminder set for {time}"),
    "set_alarm": ("Sets an alarm at <time: str>. Time is in xxxxH", _alarm, "Set an alarm at {time}", "Alarm set for {time}"),
    "book_flight": ("Books a flight from <origin: str> to <destination: str> on <date: str>. Date is in YYYY-MM-DD", _flight,
                    "Book a flight from {origin} to {destination} on {date}", "Flight booked from {origin} to {destination}"),
    "send_email": ("Sends an email to <recipient: str> with the subject <subject: str>",
                   lambda g: _pick(g, "email {recipient} about {subject}", recipient=NAMES,
                                   subject=["the budget", "the meeting", "the holiday", "the report"]),
                   "Send an email to {recipient} with the subject {subject}", "Email sent to {recipient}"),
    "book_table": ("Books a table at <restaurant: str> for <people: int> people",
                   lambda g: _pick(g, "book a table for {people} at {restaurant}", people=[2, 3, 4, 5, 6, 8],
                                   restaurant=["Luigi's", "The Golden Dragon", "Cafe Rouge", "Sakura"]),
                   "Book a table at {restaurant} for {people} people", "Table booked at {restaurant} for {people}"),
    "convert_currency": ("Converts <amount: float> US dollars to <currency: str>",
                         lambda g: _pick(g, "convert {amount:g} dollars to {currency}", amount=[10.0, 25.0, 50.0, 120.0, 300.0],
                                         currency=["euros", "yen", "pounds", "rupees"]),
                         "Convert {amount} US dollars to {currency}", "Converted {amount} US dollars to {currency}"),
    "add_todo": ("Adds <item: str> to the to-do list",
                 lambda g: _pick(g, "add {item} to my to-do list",
                                 item=["clean the kitchen", "renew my passport", "fix the bike", "plan the party"]),
                 "Add {item} to the to-do list", "Added {item} to the to-do list"),
    "get_weather": ("Gets the weather forecast for <city: str>", lambda g: _pick(g, "check the weather in {city}", city=CITIES),
                    "Get the weather forecast for {city}", "The forecast for {city} is sunny"),
    "order_food": ("Orders <quantity: int> portions of <dish: str>",
                   lambda g: _pick(g, "order {quantity} portions of {dish}", quantity=[1, 2, 3, 4],
                                   dish=["pizza", "sushi", "pad thai", "curry"]),
                   "Order {quantity} portions of {dish}", "Ordered {quantity} portions of {dish}"),
    "call_taxi": ("Calls a taxi from <pickup: str> to <destination: str>",
                  lambda g: _pick(g, "get me a taxi from {pickup} to {destination}", pickup=["home", "the office", "the station"],
                                  destination=["the airport", "the museum", "the hospital"]),
                  "Call a taxi from {pickup} to {destination}", "Taxi called from {pickup} to {destination}"),
    "play_music": ("Plays <song: str> by <artist: str>",
                   lambda g: _pick(g, "play {song} by {artist}", song=["Yesterday", "Imagine", "Halo"],
                                   artist=["The Beatles", "John Lennon"]),
                   "Play {song} by {artist}", "Playing {song} by {artist}"),
    "send_message": ("Sends the text <text: str> to <contact: str>",
                     lambda g: _pick(g, "tell {contact}: {text}", contact=NAMES,
                                     text=["I am running late", "See you soon", "Happy birthday"]),
                     "Send the text {text} to {contact}", "Message sent to {contact}"),
}


class _Stop(Exception):
    """Raised by the recording llm once it has the prompts it needs: AgentJo's call stops there."""


def _recorder(replies: list[str]):
    """An llm(system_prompt, user_prompt) that answers with `replies` in turn, records every prompt, and
    stops AgentJo (raises _Stop) at the call after them; and the list of recorded (system, user) pairs."""
    calls: list[tuple[str, str]] = []

    def llm(system_prompt: str, user_prompt: str) -> str:
        calls.append((system_prompt, user_prompt))
        if len(calls) > len(replies):
            raise _Stop
        return replies[len(calls) - 1]
    return llm, calls


def _agentjo():
    try:
        import agentjo
    except ModuleNotFoundError:
        raise R1labError("task 'agentjo' needs the PyPI package agentjo: pip install 'agentjo>=1.1'") from None
    return agentjo


def strict_json_prompt(system_prompt: str, user_prompt: str, output_format: dict) -> tuple[str, str]:
    """The (system, user) prompts `strict_json` sends to the llm on its first try."""
    llm, calls = _recorder([])
    try:
        _agentjo().strict_json(system_prompt, user_prompt, output_format, llm=llm)
    except _Stop:
        pass
    return calls[0]


def as_yaml(values: dict) -> str:
    """A reply in parse_yaml's format: one ```yaml block."""
    return "```yaml\n" + yaml.safe_dump(values, sort_keys=False, allow_unicode=True, width=1000) + "```"


def agent_prompts(agent: tuple[str, str], offered: list[str], task: str, done: list[dict], subtask_reply: str):
    """The prompts of `Agent.run`'s next step for an agent with the `offered` functions, the task, and the
    actions in `done` ({"function", "args"}) already used: [(system, user) of the subtask query] and, if the
    function chosen in `subtask_reply` has inputs, the (system, user) of the inputs query after it."""
    agentjo = _agentjo()
    llm, calls = _recorder([subtask_reply])
    bot = agentjo.Agent(agent_name=agent[0], agent_description=agent[1], llm=llm, verbose=False)
    for name in offered:
        description, _, _, outcome = FUNCTIONS[name]
        bot.assign_functions([agentjo.Function(fn_name=name, fn_description=description, external_fn=_outcome(outcome))])
    bot.assign_task(task)
    for action in done:
        bot.use_function(action["function"], action["args"])
    try:
        bot.get_next_subtask()
    except _Stop:
        pass
    return calls


def _outcome(template: str):
    def run(**args):
        return template.format(**args)
    return run


def schema_id(kind: str, names) -> str:
    """What a problem's split hashes: its kind and schema names (keys, offered functions or inputs), each
    without case or punctuation ("Main Category" = "main_category"), in sorted order."""
    return kind + ":" + ",".join(sorted(re.sub(r"[^a-z0-9]", "", name.lower()) for name in names))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _problem(kind: str, system: str, user: str, reply: str, values: dict, meta: dict) -> Problem:
    prompt = json.dumps({"system": system, "user": user}, ensure_ascii=False)
    return Problem(id=f"agentjo-{kind}-{hashlib.sha256(prompt.encode()).hexdigest()[:12]}", prompt=prompt, answer=reply,
                   meta={"agentjo": {"kind": kind, **meta}}, steps=tuple(f"{k}: {v}" for k, v in values.items()))


@dataclass(frozen=True)
class AgentJo:
    agent_percent: int = 40           # share of Agent.run calls (subtask choice, function inputs); the rest strict_json
    test_percent: int = 20            # share of schemas (key sets, function sets) held out for the test split

    name = "agentjo"

    def __post_init__(self):
        if not 0 <= self.agent_percent <= 100:
            raise R1labError(f"agentjo: agent_percent must be in 0..100, got {self.agent_percent}")
        if not 0 < self.test_percent < 100:
            raise R1labError(f"agentjo: test_percent must be in 1..99, got {self.test_percent}")

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """n distinct problems of the split (their schemas in it), drawn from a stream seeded by (seed, split)."""
        check_split(split)
        rng = random.Random(f"agentjo-{seed}-{split}")
        found: dict[str, Problem] = {}
        for _ in range(200 * n + 1000):
            if len(found) == n:
                break
            if rng.random() * 100 < self.agent_percent:
                schema, make = self._agent(rng, inputs=rng.random() < 1 / 3)
            else:
                schema, make = self._strict_json(rng)
            if split_of(schema, self.test_percent) == split:
                problem = make()
                found.setdefault(problem.prompt, problem)
        if len(found) < n:
            raise R1labError(f"agentjo: asked for {n} {split} problems but only {len(found)} distinct ones were drawn; "
                             "ask for fewer or change test_percent")
        return list(found.values())

    @staticmethod
    def _strict_json(g: random.Random):
        """(schema id, problem maker) for a strict_json call on a generated schema and topic."""
        keys = g.sample([*KEYS, FIELD_KEY[0]], g.choice([1, 2, 2, 3, 3, 4]))
        snake = g.random() < 0.3
        shown = {k: re.sub(r"[^a-z0-9]+", "_", k.lower()).strip("_") if snake else k for k in keys}
        schema = schema_id("strict_json", keys)
        topic, field, related = g.choice(TOPICS)
        template = g.choice(SYSTEM_PROMPTS)

        def make() -> Problem:
            output_format, values = {}, {}
            for key in keys:
                if key == FIELD_KEY[0]:
                    description, kind, value = FIELD_KEY[1], f"Enum{_other_fields(field, g)}", field
                else:
                    description, kind, rule = KEYS[key]
                    value = rule(topic, field, related, g)
                output_format[shown[key]] = (description if kind is None else
                                             f"{description}, type: {kind}" if g.random() < 0.5 else f"type: {kind}")
                values[shown[key]] = value
            system_prompt = template.format(keys=_join([shown[k].replace("_", " ").lower() for k in keys]))
            system, user = strict_json_prompt(system_prompt, topic, output_format)
            reply = json.dumps({f"###{k}###": v for k, v in values.items()}, indent=2, ensure_ascii=False)
            return _problem("strict_json", system, user, reply, values, {
                "output_format": output_format, "system_prompt": system_prompt, "user_prompt": topic})
        return schema, make

    @staticmethod
    def _agent(g: random.Random, inputs: bool):
        """(schema id, problem maker) for Agent.run's subtask query, or with `inputs` the function-inputs query."""
        offered = sorted(g.sample(list(FUNCTIONS), g.randint(1, 3)))    # <= 5: AgentJo lists all, no embedding ranker
        actions = []
        for name in (g.choice(offered) for _ in range(g.randint(1, 3))):
            args, phrase = FUNCTIONS[name][1](g)
            actions.append({"function": name, "args": args, "phrase": phrase})
        done = g.randint(0, len(actions) - 1 if inputs else len(actions))
        following = actions[done] if done < len(actions) else None
        schema = schema_id("agent_inputs", following["args"]) if inputs else schema_id("agent_subtask", offered)
        agent = g.choice(AGENTS)
        task = _join([a["phrase"] for a in actions]) + "."
        task = task[0].upper() + task[1:]

        def make() -> Problem:
            if following:
                subtask = FUNCTIONS[following["function"]][2].format(**following["args"])
                values = {"Observation": f"{done} of the {len(actions)} actions in the Assigned Task are done" if done
                          else "No subtasks have been completed yet",
                          "Thoughts": f"The next step is to {subtask[0].lower() + subtask[1:]}",
                          "Current Subtask": subtask, "Equipped Function Name": following["function"]}
            else:
                values = {"Observation": f"All {len(actions)} actions in the Assigned Task are done",
                          "Thoughts": "Nothing is left to do, so the task can end",
                          "Current Subtask": "End the task", "Equipped Function Name": "end_task"}
            calls = agent_prompts(agent, offered, task, actions[:done], as_yaml(values))
            if inputs:
                fields = re.findall(r"<(\w+):(.*?)>", FUNCTIONS[following["function"]][0])   # as Agent reads them
                output_format = {name: f"A suitable value, type: {kind}" for name, kind in fields}
                args = {name: following["args"][name] for name, _ in fields}
                return _problem("agent_inputs", *calls[1], as_yaml(args), args,
                                {"output_format": output_format, "expected": args})
            return _problem("agent_subtask", *calls[0], as_yaml(values), values, {
                "output_format": dict.fromkeys(AGENT_KEYS), "choices": ["use_llm", "end_task", *offered],
                "expected": values["Equipped Function Name"]})
        return schema, make

"""Search over a synthesized document collection (``search`` / ``open`` tools), multi-hop.

Database: an encyclopedia of made-up people (birth year, birth city, profession), cities (country,
founding year, founder) and countries (capital, continent), one document each, written as prose,
plus distractor notes that mention names. ``search`` ranks by word overlap (title words count
three times) and returns ids, titles and a short snippet; ``open`` returns a document's text.

Levels (hops): 1 a person's birth year; 2 the country of their birth city; 3 the founding year of
their birth city; 4 the birth year of that city's founder; 5 the continent of the country where
that founder was born.
"""
from __future__ import annotations

import random
import re
from typing import Any

from envs.base import ToolEnv, ToolError, ToolSpec, params
from envs.registry import FAMILIES, Task
from envs.synth.common import SUBMIT_ANSWER, answer_of, answers_match, unique_words

PROFESSIONS = ("painter", "engineer", "poet", "merchant", "astronomer", "sailor", "judge")
CONTINENTS = ("Aurelia", "Borea", "Calyx")
TOP_K = 5


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


class SearchEnv(ToolEnv):
    family = "search"
    system_prompt = ("You answer questions from an encyclopedia. Search it, open documents to read "
                     "them, follow the facts you need, then call submit_result with the answer.")

    def tools(self) -> dict[str, tuple[ToolSpec, Any]]:
        docs = {x["id"]: x for x in self.task.data["docs"]}

        def search(query: str) -> list[dict[str, str]] | str:
            q = set(_words(query))
            scored = []
            for x in docs.values():
                s = 3 * sum(w in q for w in _words(x["title"])) + sum(w in q for w in set(_words(x["text"])))
                if s:
                    scored.append((-s, x["id"]))
            scored.sort()
            hits = [{"id": i, "title": docs[i]["title"], "snippet": docs[i]["text"][:40] + "..."}
                    for _, i in scored[:TOP_K]]
            return hits or "No results."

        def open_doc(id: str) -> str:
            if id not in docs:
                raise ToolError(f"no document {id!r}")
            return docs[id]["text"]

        return {
            "search": (ToolSpec("search", "Search the encyclopedia; returns document ids, titles, snippets.",
                                params(["query"], query="string")), search),
            "open": (ToolSpec("open", "The full text of a document by id.", params(["id"], id="string")), open_doc),
            "submit_result": (SUBMIT_ANSWER, None),
        }

    def verify(self, answer: dict[str, Any]) -> float:
        return float(answers_match(self.task.expected["answer"], answer_of(answer)))


class SearchFamily:
    name = "search"
    min_level = 1
    max_level = 5
    env_class = SearchEnv

    def build_database(self, rng: random.Random) -> dict[str, Any]:
        taken: set[str] = set()
        countries = unique_words(rng, 3, 2, taken)
        cities = unique_words(rng, 6, 2, taken)
        firsts, lasts = unique_words(rng, 12, 2, taken), unique_words(rng, 12, 3, taken)
        people = [{"name": f"{f} {g}", "year": rng.randint(1500, 1950), "city": rng.choice(cities),
                   "job": rng.choice(PROFESSIONS)} for f, g in zip(firsts, lasts)]
        facts = {"countries": {c: {"continent": rng.choice(CONTINENTS), "capital": rng.choice(cities)}
                               for c in countries},
                 "cities": {c: {"country": rng.choice(countries), "founded": rng.randint(800, 1490),
                                "founder": rng.choice(people)["name"]} for c in cities},
                 "people": {p["name"]: p for p in people}}
        docs = []
        for p in people:
            docs.append((p["name"], f"{p['name']} was a {p['job']} born in {p['year']} in the city of {p['city']}."))
        for c, f in facts["cities"].items():
            docs.append((c, f"{c} is a city in {f['country']}. It was founded in {f['founded']} by {f['founder']}."))
        for c, f in facts["countries"].items():
            docs.append((c, f"{c} is a country on the continent of {f['continent']}. Its capital is {f['capital']}."))
        for _ in range(6):  # distractors: notes that mention names without the facts
            a, b = rng.sample(people, 2)
            note = f"A letter from {a['name']} to {b['name']} about a journey to {rng.choice(cities)}."
            docs.append((f"Letters of {a['name'].split()[0]}", note))
        rng.shuffle(docs)
        return {"docs": [{"id": f"D{i + 1}", "title": t, "text": x} for i, (t, x) in enumerate(docs)], "facts": facts}

    def compose(self, data: dict[str, Any], rng: random.Random, level: int) -> Task:
        facts = data["facts"]
        doc_of = {x["title"]: x["id"] for x in data["docs"]}
        person = facts["people"][rng.choice(sorted(facts["people"]))]
        calls: list[dict[str, Any]] = []

        def look(title: str) -> None:
            calls.append({"name": "search", "arguments": {"query": title}})
            calls.append({"name": "open", "arguments": {"id": doc_of[title]}})

        look(person["name"])
        n = person["name"]
        city = facts["cities"][person["city"]]
        if level == 1:
            q, ans = f"In which year was {n} born?", person["year"]
        elif level == 2:
            look(person["city"])
            q, ans = f"In which country is the city where {n} was born?", city["country"]
        elif level == 3:
            look(person["city"])
            q, ans = f"In which year was the city where {n} was born founded?", city["founded"]
        else:
            look(person["city"])
            founder = facts["people"][city["founder"]]
            look(founder["name"])
            if level == 4:
                q, ans = f"What is the birth year of the founder of the city where {n} was born?", founder["year"]
            else:
                fcity = facts["cities"][founder["city"]]
                look(founder["city"])
                look(fcity["country"])
                q = (f"On which continent is the country of the birth city of the founder of the city "
                     f"where {n} was born?")
                ans = facts["countries"][fcity["country"]]["continent"]
        calls.append({"name": "submit_result", "arguments": {"answer": str(ans)}})
        return Task("", self.name, level, q + " Answer with the value only.", data,
                    ["search", "open", "submit_result"], calls, {"answer": str(ans)})

    def trivial_answers(self, task: Task) -> list[dict[str, Any]]:
        return [{}, {"answer": ""}, {"answer": "0"}, {"answer": "unknown"}]


FAMILIES.register("search")(SearchFamily())

"""Trip planning under a budget (V3.2's "general agent" example): hotels, transport, attractions.

Database: 5 cities, 3-4 hotels per city (price per night, star rating), 2-3 transport options per
ordered city pair, 4 attractions per city (category, ticket price). The task names an origin, one
or two destinations with nights, and (by level) a minimum hotel rating and attraction categories
to visit; the budget is the cheapest feasible plan's cost plus a slack that shrinks with level.
The verifier checks any submitted plan for feasibility (hard to solve, easy to verify): right
cities and legs, rating, categories covered, total cost <= budget.

Levels: 1 one city, hotel only; 2 + transport from the origin; 3 + an attraction category;
4 + a minimum rating and a distractor tool; 5 two destinations, a category in each, tighter slack.
"""
from __future__ import annotations

import random
from typing import Any

from envs.base import ToolEnv, ToolError, ToolSpec, params
from envs.registry import FAMILIES, Task
from envs.synth.common import unique_words

CATEGORIES = ("museum", "park", "tour", "show", "market")
MODES = ("train", "bus", "flight")


class TripEnv(ToolEnv):
    family = "trip"
    system_prompt = ("You are a travel agent. Use the tools to look up hotels, transport and "
                     "attractions, then call submit_result with a plan that meets every constraint.")

    def tools(self) -> dict[str, tuple[ToolSpec, Any]]:
        d = self.task.data

        def get_hotels(city: str) -> list[dict[str, Any]]:
            _city(d, city)
            return [h for h in d["hotels"] if h["city"] == city]

        def get_transport(origin: str, destination: str) -> list[dict[str, Any]]:
            _city(d, origin), _city(d, destination)
            return [t for t in d["transport"] if t["origin"] == origin and t["destination"] == destination]

        def get_attractions(city: str) -> list[dict[str, Any]]:
            _city(d, city)
            return [a for a in d["attractions"] if a["city"] == city]

        def get_weather(city: str) -> dict[str, Any]:
            _city(d, city)
            return {"city": city, "forecast": d["weather"][city]}

        city = params(["city"], city=("string", "city name"))
        return {
            "get_hotels": (ToolSpec("get_hotels", "Hotels in a city with price per night and stars.", city), get_hotels),
            "get_transport": (ToolSpec("get_transport", "Transport options from one city to another.",
                                       params(["origin", "destination"], origin="string", destination="string")),
                              get_transport),
            "get_attractions": (ToolSpec("get_attractions", "Attractions in a city with category and ticket price.",
                                         city), get_attractions),
            "get_weather": (ToolSpec("get_weather", "Weather forecast of a city.", city), get_weather),
            "submit_result": (ToolSpec("submit_result", "Submit the plan; this ends the task.", params(
                ["hotels", "transport", "attractions"],
                hotels=("array", "hotel ids, one per destination, in order"),
                transport=("array", "transport ids, one per leg, in order"),
                attractions=("array", "attraction ids"))), None),
        }

    def verify(self, answer: dict[str, Any]) -> float:
        return float(plan_ok(self.task.data, self.task.expected, answer))


def _city(d: dict[str, Any], city: str) -> None:
    if city not in d["cities"]:
        raise ToolError(f"unknown city {city!r}; known cities: {', '.join(d['cities'])}")


def plan_cost(d: dict[str, Any], exp: dict[str, Any], plan: dict[str, Any]) -> float | None:
    """Total cost of a feasible plan, or None when it breaks a constraint."""
    if not isinstance(plan, dict):
        return None
    hotels, legs, atts = plan.get("hotels"), plan.get("transport"), plan.get("attractions")
    if not (isinstance(hotels, list) and isinstance(legs, list) and isinstance(atts, list)):
        return None
    by_id = {x["id"]: x for k in ("hotels", "transport", "attractions") for x in d[k]}
    dests, nights = exp["destinations"], exp["nights"]
    if len(hotels) != len(dests) or len(legs) != len(exp["legs"]) or len(set(map(str, atts))) != len(atts):
        return None
    cost = 0.0
    for hid, city, n in zip(hotels, dests, nights):
        h = by_id.get(hid) if isinstance(hid, str) else None
        if h is None or h.get("city") != city or "stars" not in h or h["stars"] < exp["min_stars"]:
            return None
        cost += h["price"] * n
    for tid, (a, b) in zip(legs, exp["legs"]):
        t = by_id.get(tid) if isinstance(tid, str) else None
        if t is None or t.get("origin") != a or t.get("destination") != b:
            return None
        cost += t["price"]
    seen = set()
    for aid in atts:
        a = by_id.get(aid) if isinstance(aid, str) else None
        if a is None or "category" not in a or a["city"] not in dests:
            return None
        seen.add((a["city"], a["category"]))
        cost += a["price"]
    if any((c, cat) not in seen for c, cat in exp["visit"]):
        return None
    return cost


def plan_ok(d: dict[str, Any], exp: dict[str, Any], plan: dict[str, Any]) -> bool:
    cost = plan_cost(d, exp, plan)
    return cost is not None and cost <= exp["budget"] + 1e-9


class TripFamily:
    name = "trip"
    min_level = 1
    max_level = 5
    env_class = TripEnv

    def build_database(self, rng: random.Random) -> dict[str, Any]:
        cities = unique_words(rng, 5)
        hotels, transport, attractions = [], [], []
        for c in cities:
            for _ in range(rng.randint(3, 4)):
                hotels.append({"id": f"H{len(hotels) + 1}", "city": c, "name": f"Hotel {unique_words(rng, 1, 1)[0]}",
                               "stars": rng.randint(2, 5), "price": rng.randrange(40, 260, 5)})
            for cat in rng.sample(CATEGORIES, 4):
                attractions.append({"id": f"A{len(attractions) + 1}", "city": c, "category": cat,
                                    "name": f"{unique_words(rng, 1, 1)[0]} {cat}", "price": rng.randrange(0, 60, 5)})
        for a in cities:
            for b in cities:
                if a != b:
                    for mode in rng.sample(MODES, rng.randint(2, 3)):
                        transport.append({"id": f"T{len(transport) + 1}", "origin": a, "destination": b,
                                          "mode": mode, "price": rng.randrange(15, 200, 5)})
        weather = {c: rng.choice(["sunny", "rain", "cloudy", "windy"]) for c in cities}
        return {"cities": cities, "hotels": hotels, "transport": transport, "attractions": attractions,
                "weather": weather}

    def compose(self, data: dict[str, Any], rng: random.Random, level: int) -> Task:
        origin, *others = rng.sample(data["cities"], 3)
        dests = others[:2] if level >= 5 else others[:1]
        nights = [rng.randint(1, 3) for _ in dests]
        legs = [[origin, dests[0]]] + ([[dests[0], dests[1]]] if len(dests) > 1 else []) if level >= 2 else []
        min_stars = 1
        if level >= 4:  # a rating some but not all hotels meet
            min_stars = rng.choice(sorted({h["stars"] for h in data["hotels"] if h["city"] in dests}))
            if any(not [h for h in data["hotels"] if h["city"] == c and h["stars"] >= min_stars] for c in dests):
                min_stars = 1
        visit = []
        if level >= 3:
            for c in dests:
                visit.append([c, rng.choice([a["category"] for a in data["attractions"] if a["city"] == c])])
        # The cheapest feasible plan, found with the same look-ups the reference solution makes.
        ref_calls: list[dict[str, Any]] = []
        plan: dict[str, list[str]] = {"hotels": [], "transport": [], "attractions": []}
        for c in dests:
            ref_calls.append({"name": "get_hotels", "arguments": {"city": c}})
            ok = [h for h in data["hotels"] if h["city"] == c and h["stars"] >= min_stars]
            plan["hotels"].append(min(ok, key=lambda h: (h["price"], h["id"]))["id"])
        for a, b in legs:
            ref_calls.append({"name": "get_transport", "arguments": {"origin": a, "destination": b}})
            opts = [t for t in data["transport"] if t["origin"] == a and t["destination"] == b]
            plan["transport"].append(min(opts, key=lambda t: (t["price"], t["id"]))["id"])
        for c, cat in visit:
            ref_calls.append({"name": "get_attractions", "arguments": {"city": c}})
            opts = [x for x in data["attractions"] if x["city"] == c and x["category"] == cat]
            plan["attractions"].append(min(opts, key=lambda x: (x["price"], x["id"]))["id"])
        exp = {"destinations": dests, "nights": nights, "legs": legs, "min_stars": min_stars,
               "visit": visit, "budget": 0}
        cheapest = plan_cost(data, exp, plan)
        slack = {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.2, 5: 0.1}[level]
        exp["budget"] = int(cheapest * (1 + slack)) if cheapest else 0
        ref_calls.append({"name": "submit_result", "arguments": plan})

        stay = " then ".join(f"{n} night{'s' * (n > 1)} in {c}" for c, n in zip(dests, nights))
        parts = [f"Plan a trip: {stay}."]
        if legs:
            parts.append(f"I start in {origin}; book transport for every leg ({', '.join(f'{a} to {b}' for a, b in legs)}).")
        if min_stars > 1:
            parts.append(f"Every hotel must have at least {min_stars} stars.")
        for c, cat in visit:
            parts.append(f"In {c}, visit one {cat}.")
        parts.append(f"Total cost (hotel price per night times nights, transport, tickets) must not exceed "
                     f"${exp['budget']}. Submit hotel ids (one per city, in order), transport ids (one per leg) "
                     f"and attraction ids.")
        tools = ["get_hotels", "get_transport", "get_attractions"] + (["get_weather"] if level >= 4 else [])
        return Task("", self.name, level, " ".join(parts), data, tools + ["submit_result"], ref_calls, exp)

    def trivial_answers(self, task: Task) -> list[dict[str, Any]]:
        n_h, n_t = len(task.expected["destinations"]), len(task.expected["legs"])
        priciest = {"hotels": [max((h for h in task.data["hotels"] if h["city"] == c), key=lambda h: h["price"])["id"]
                               for c in task.expected["destinations"]],
                    "transport": task.reference[-1]["arguments"]["transport"],
                    "attractions": task.reference[-1]["arguments"]["attractions"]}
        out = [{}, {"hotels": [], "transport": [], "attractions": []},
               {"hotels": ["H0"] * n_h, "transport": ["T0"] * n_t, "attractions": []}]
        return out + ([priciest] if plan_cost(task.data, task.expected, priciest) is not None
                      and plan_cost(task.data, task.expected, priciest) > task.expected["budget"] else [])


FAMILIES.register("trip")(TripFamily())

"""Data lookup over a small company database (employees, departments, a reporting chain).

Database: 4 departments (city, floor), 14-20 employees (department, manager, salary, start year)
in a three-level hierarchy. ``find_employee`` returns ids only, so every fact takes a look-up,
and questions chain look-ups.

Levels: 1 an employee's salary; 2 the city of their department; 3 their manager's salary;
4 the city of their manager's department; 5 the start year of their manager's manager
(plus the distractor tool ``list_departments`` from level 4 on).

Level 0, the compact level (a departure, for small models on short contexts; the default
``levels`` are 1-5): the salary or the start year of the employee with a given id, through
``get_salary`` / ``get_start_year`` (only the one asked for is exposed), which return the bare
number, under a one-line system prompt. An episode is about 150 tokens and ids are always 3 digits
(salaries 5-6, years 4), so every copy (the id into the call, the value into the answer) spans a
short, nearly fixed distance. Level 1 does not
extend level 0 (the pipeline composes level 0 on its own).
"""
from __future__ import annotations

import random
from typing import Any

from envs.base import ToolEnv, ToolError, ToolSpec, params
from envs.registry import FAMILIES, Task
from envs.synth.common import SUBMIT_ANSWER, answer_of, answers_match, unique_words


class LookupEnv(ToolEnv):
    family = "lookup"
    system_prompt = ("You answer questions about a company database. Use the tools to look up the "
                     "facts, then call submit_result with the answer.")
    compact_prompt = "Look it up, then submit."
    """The system prompt of level 0 (the compact level)."""

    def reset(self, task: Any) -> Any:
        obs = super().reset(task)
        if task.difficulty == 0:
            obs.messages[0]["content"] = self.compact_prompt
        return obs

    def tools(self) -> dict[str, tuple[ToolSpec, Any]]:
        d = self.task.data
        emp = {e["id"]: e for e in d["employees"]}
        dept = {x["id"]: x for x in d["departments"]}

        def find_employee(name: str) -> list[dict[str, Any]]:
            q = name.strip().lower()
            hits = [{"id": e["id"], "name": e["name"]} for e in d["employees"] if q and q in e["name"].lower()]
            return hits or "No employee matches that name."

        def get_employee(id: int) -> dict[str, Any]:
            if id not in emp:
                raise ToolError(f"no employee with id {id}")
            return emp[id]

        def get_department(id: int) -> dict[str, Any]:
            if id not in dept:
                raise ToolError(f"no department with id {id}")
            return dept[id]

        def get_salary(id: int) -> int:
            return get_employee(id)["salary"]

        def get_start_year(id: int) -> int:
            return get_employee(id)["start_year"]

        def list_departments() -> list[dict[str, Any]]:
            return [{"id": x["id"], "name": x["name"]} for x in d["departments"]]

        by_id = params(["id"], id="integer")
        return {
            "find_employee": (ToolSpec("find_employee", "Ids of employees whose name contains the text.",
                                       params(["name"], name="string")), find_employee),
            "get_employee": (ToolSpec("get_employee", "An employee record by id.", by_id), get_employee),
            "get_department": (ToolSpec("get_department", "A department record by id.", by_id), get_department),
            "get_salary": (ToolSpec("get_salary", "The salary of an employee by id.", by_id), get_salary),
            "get_start_year": (ToolSpec("get_start_year", "The start year of an employee by id.", by_id),
                               get_start_year),
            "list_departments": (ToolSpec("list_departments", "All department ids and names."), list_departments),
            "submit_result": (SUBMIT_ANSWER, None),
        }

    def verify(self, answer: dict[str, Any]) -> float:
        return float(answers_match(self.task.expected["answer"], answer_of(answer)))


class LookupFamily:
    name = "lookup"
    min_level = 0
    max_level = 5
    env_class = LookupEnv

    def build_database(self, rng: random.Random) -> dict[str, Any]:
        cities = unique_words(rng, 4)
        depts = [{"id": 10 + i, "name": n, "city": cities[i], "floor": rng.randint(1, 9)}
                 for i, n in enumerate(rng.sample(["Sales", "Research", "Finance", "Support", "Legal", "Design"], 4))]
        n = rng.randint(14, 20)
        firsts, lasts = unique_words(rng, n), unique_words(rng, n, 3)
        ids = rng.sample(range(100, 1000), n)
        emps = []
        for i in range(n):
            tier = 0 if i == 0 else 1 if i <= 3 else 2
            boss = None if tier == 0 else ids[0] if tier == 1 else ids[rng.randint(1, 3)]
            emps.append({"id": ids[i], "name": f"{firsts[i]} {lasts[i]}", "department": rng.choice(depts)["id"],
                         "manager": boss, "salary": rng.randrange(30000, 150000, 500),
                         "start_year": rng.randint(1995, 2024)})
        rng.shuffle(emps)
        return {"departments": depts, "employees": emps}

    def compose(self, data: dict[str, Any], rng: random.Random, level: int) -> Task:
        if level == 0:
            return self._compact(data, rng)
        emp = {e["id"]: e for e in data["employees"]}
        dept = {x["id"]: x for x in data["departments"]}
        leaves = sorted((e for e in data["employees"] if e["manager"] is not None
                         and emp[e["manager"]]["manager"] is not None), key=lambda e: e["id"])
        who = rng.choice(leaves)
        name = who["name"]
        calls = [{"name": "find_employee", "arguments": {"name": name}},
                 {"name": "get_employee", "arguments": {"id": who["id"]}}]
        if level == 1:
            q, ans = f"What is the salary of {name}?", who["salary"]
        elif level == 2:
            calls.append({"name": "get_department", "arguments": {"id": who["department"]}})
            q, ans = f"In which city is the department of {name} located?", dept[who["department"]]["city"]
        else:
            boss = emp[who["manager"]]
            calls.append({"name": "get_employee", "arguments": {"id": boss["id"]}})
            if level == 3:
                q, ans = f"What is the salary of the manager of {name}?", boss["salary"]
            elif level == 4:
                calls.append({"name": "get_department", "arguments": {"id": boss["department"]}})
                q, ans = (f"In which city is the department of the manager of {name} located?",
                          dept[boss["department"]]["city"])
            else:
                top = emp[boss["manager"]]
                calls.append({"name": "get_employee", "arguments": {"id": top["id"]}})
                q, ans = f"In which year did the manager of the manager of {name} start?", top["start_year"]
        calls.append({"name": "submit_result", "arguments": {"answer": str(ans)}})
        tools = ["find_employee", "get_employee", "get_department"] + (["list_departments"] if level >= 4 else [])
        return Task("", self.name, level, q + " Answer with the value only.", data, tools + ["submit_result"],
                    calls, {"answer": str(ans)})

    def _compact(self, data: dict[str, Any], rng: random.Random) -> Task:
        """Level 0: one field of the employee with a given id, one look-up."""
        who = rng.choice(sorted(data["employees"], key=lambda e: e["id"]))
        field, tool, what = rng.choice([("salary", "get_salary", "salary"),
                                        ("start_year", "get_start_year", "start year")])
        ans = str(who[field])
        calls = [{"name": tool, "arguments": {"id": who["id"]}},
                 {"name": "submit_result", "arguments": {"answer": ans}}]
        return Task("", self.name, 0, f"What is the {what} of employee {who['id']}?", data,
                    [tool, "submit_result"], calls, {"answer": ans})

    def trivial_answers(self, task: Task) -> list[dict[str, Any]]:
        return [{}, {"answer": ""}, {"answer": "0"}, {"answer": "unknown"}]


FAMILIES.register("lookup")(LookupFamily())

"""BFCL (Berkeley Function Calling Leaderboard) accuracy of OpenAI-compatible
servers, side by side: a benchmark command, not a test.

Usage:
  python3 scripts/bfcl.py --target NAME=BASE_URL [--target ...] --model MODEL
                          [--categories simple_python,multiple] [--limit N]

Uses the `bfcl-eval` wheel from PyPI (fetched with `pip download --no-deps`
into target/bfcl/ once; its many optional dependencies are not needed): its
question data and its AST checker (`ast_checker`), so a call counts as
correct exactly when BFCL would count it. Every question of these categories
intends a call. Each question goes to every target in turn, through the
official `openai` SDK (Chat Completions, tools, temperature 0). Printed per
target and category: accuracy (BFCL's AST check), structured-call rate
(questions answered with at least one structured tool call), and output
tokens/s (completion tokens over the request's wall time).
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import time
import types
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STORE = os.path.join(ROOT, "target", "bfcl")
VERSION = "2026.3.23"


def bfcl_package():
    """The extracted bfcl-eval wheel (downloaded once)."""
    extracted = os.path.join(STORE, VERSION)
    if not os.path.isdir(os.path.join(extracted, "bfcl_eval")):
        os.makedirs(STORE, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        f"bfcl-eval=={VERSION}", "-d", STORE], check=True)
        wheel = glob.glob(os.path.join(STORE, f"bfcl_eval-{VERSION}-*.whl"))[0]
        zipfile.ZipFile(wheel).extractall(extracted)
    sys.path.insert(0, extracted)
    # The checker reads one setting of the model's config (whether "." in
    # function names was sent as "_"); clawpen and llama.cpp take names as
    # they are. The real module imports every provider's SDK.
    config = types.ModuleType("bfcl_eval.constants.model_config")
    config.MODEL_CONFIG_MAPPING = {"local": types.SimpleNamespace(underscore_to_dot=False)}
    sys.modules["bfcl_eval.constants.model_config"] = config
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    return extracted, Language, GORILLA_TO_OPENAPI, ast_checker


def to_openapi(schema, mapping):
    """BFCL's parameter types ("dict", "float", "tuple", ...) as JSON schema."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "type" and isinstance(v, str):
                out[k] = mapping.get(v, v)
            elif k in ("properties",):
                out[k] = {p: to_openapi(s, mapping) for p, s in v.items()}
            elif k in ("items", "additionalProperties") and isinstance(v, dict):
                out[k] = to_openapi(v, mapping)
            elif k == "optional":
                continue
            else:
                out[k] = v
        return out
    return schema


def load(extracted, category, limit):
    data = os.path.join(extracted, "bfcl_eval", "data")
    with open(os.path.join(data, f"BFCL_v4_{category}.json")) as f:
        questions = [json.loads(line) for line in f]
    with open(os.path.join(data, "possible_answer", f"BFCL_v4_{category}.json")) as f:
        answers = {a["id"]: a["ground_truth"] for a in map(json.loads, f)}
    if limit:
        questions = questions[:limit]
    return [(q, answers[q["id"]]) for q in questions]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", action="append", required=True, help="NAME=BASE_URL")
    ap.add_argument("--model", required=True)
    ap.add_argument("--categories", default="simple_python,multiple")
    ap.add_argument("--limit", type=int, default=0, help="questions per category (0: all)")
    ap.add_argument("--max-tokens", type=int, default=256)
    args = ap.parse_args()
    from openai import OpenAI

    extracted, Language, mapping, ast_checker = bfcl_package()
    targets = [t.split("=", 1) for t in args.target]
    clients = {n: OpenAI(base_url=u, api_key="unused", max_retries=0, timeout=900)
               for n, u in targets}
    rows = []
    for category in args.categories.split(","):
        items = load(extracted, category, args.limit)
        tally = {n: {"correct": 0, "structured": 0, "tokens": 0, "seconds": 0.0}
                 for n, _ in targets}
        for i, (q, truth) in enumerate(items):
            functions = q["function"]
            tools = [{"type": "function", "function": {
                "name": f["name"], "description": f.get("description", ""),
                "parameters": to_openapi(f["parameters"], mapping)}} for f in functions]
            messages = q["question"][0]
            for name, _ in targets:
                started = time.time()
                try:
                    r = clients[name].chat.completions.create(
                        model=args.model, messages=messages, tools=tools, temperature=0,
                        max_tokens=args.max_tokens)
                except Exception as e:  # noqa: BLE001 - an error is a wrong answer
                    print(f"{name} {q['id']}: {e}", file=sys.stderr)
                    continue
                t = tally[name]
                t["seconds"] += time.time() - started
                t["tokens"] += r.usage.completion_tokens if r.usage else 0
                calls = r.choices[0].message.tool_calls or []
                if not calls:
                    continue
                t["structured"] += 1
                output = []
                for c in calls:
                    try:
                        output.append({c.function.name: json.loads(c.function.arguments)})
                    except json.JSONDecodeError:
                        output.append({c.function.name: {}})
                verdict = ast_checker(functions, output, truth, Language.PYTHON, category,
                                      "local")
                t["correct"] += bool(verdict["valid"])
            done = i + 1
            if done % 10 == 0 or done == len(items):
                status = "  ".join(f"{n} {tally[n]['correct']}/{done}" for n, _ in targets)
                print(f"[{category} {done}/{len(items)}] {status}", file=sys.stderr)
        for name, _ in targets:
            t = tally[name]
            n = len(items)
            rows.append((category, name, n, t["correct"] / n, t["structured"] / n,
                         t["tokens"] / t["seconds"] if t["seconds"] else 0.0))
    print(f"model {args.model}")
    print(f"{'category':<14} {'server':<24} {'n':>4} {'accuracy':>9} {'structured':>11} "
          f"{'out tok/s':>10}")
    for category, name, n, acc, structured, tps in rows:
        print(f"{category:<14} {name:<24} {n:>4} {acc:>9.1%} {structured:>11.1%} {tps:>10.1f}")


if __name__ == "__main__":
    main()

"""Self time per operator in a Chrome trace from `forge bench --profile`.

    python bench/profile_summary.py TRACE.json [--top 30]
"""
import argparse
import collections
import json


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--shapes", action="store_true", help="one row per operator and input shapes")
    a = ap.parse_args()
    with open(a.trace) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X" and e.get("cat") in ("cpu_op", None)]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    self_us, total_us, calls = collections.Counter(), collections.Counter(), collections.Counter()
    wall = 0.0
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # (end, name)
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                stack.pop()
            name = e["name"]
            if a.shapes:
                name += " " + str(e.get("args", {}).get("Input Dims", ""))
            e["name"] = name
            if stack:
                self_us[stack[-1][1]] -= e["dur"]
            else:
                wall += e["dur"]
            self_us[e["name"]] += e["dur"]
            total_us[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            stack.append((e["ts"] + e["dur"], e["name"]))
    print(f"top-level op time {wall / 1e3:.1f} ms\n")
    print(f"{'self ms':>9} {'self %':>7} {'total ms':>9} {'calls':>6}  op")
    for name, us in self_us.most_common(a.top):
        print(f"{us / 1e3:9.1f} {100 * us / wall:6.1f}% {total_us[name] / 1e3:9.1f} {calls[name]:6d}  {name}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Triad's monitoring against a real Prometheus (used by hack/prometheus.sh).

  prometheus.py config <rendered.yaml> <kubeconfig> <out-dir> <evaluation-interval>
      Translates the chart's rendered ServiceMonitor and PodMonitor into Prometheus
      scrape jobs (kubernetes_sd_configs, the relabelling the Prometheus Operator
      generates for them) and its PrometheusRule into a rules file. Writes
      <out-dir>/prometheus.yml and <out-dir>/rules.yml. A monitor field this does not
      translate is an error, so a change to the monitors cannot pass unchecked.

  prometheus.py check <url> <dashboard.json> <start-unix> <scrape-seconds>
                     [--expect <variable>=<value>,...]... [--alert <name>]...
      Runs every query of the Grafana dashboard over [start, now] as Grafana's panels
      would (template variables at "All", $__rate_interval from the scrape interval)
      and prints one ok/FAIL line per panel; a template variable must list the values
      expected of it. Then waits for each named alert to fire.
"""
import argparse
import json
import math
import re
import sys
import time
import urllib.parse
import urllib.request

try:
    import yaml
except ImportError:
    sys.exit("prometheus.py needs PyYAML: apt-get install python3-yaml (or pip install pyyaml)")

# Fields of a ServiceMonitor endpoint / PodMonitor podMetricsEndpoint that are
# translated below; anything else fails the translation.
ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "honorLabels", "scheme",
                   "relabelings", "metricRelabelings"}
SPEC_FIELDS = {"ServiceMonitor": {"selector", "namespaceSelector", "endpoints", "jobLabel"},
               "PodMonitor": {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel"}}


def sanitize(label):
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def snake(key):
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def relabelings(items):
    """The monitors' relabelings are Prometheus relabel_configs in camelCase."""
    return [{snake(k): v for k, v in r.items()} for r in items or []]


def selector_relabels(selector, kind):
    """Keep/drop rules for a label selector on the service's or pod's labels."""
    label = f"__meta_kubernetes_{kind}_label_"
    present = f"__meta_kubernetes_{kind}_labelpresent_"
    out = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        k = sanitize(key)
        out.append({"action": "keep", "source_labels": [label + k, present + k],
                    "regex": f"({re.escape(str(value))});true"})
    for expr in selector.get("matchExpressions") or []:
        k, op, values = sanitize(expr["key"]), expr["operator"], expr.get("values") or []
        alternatives = "|".join(re.escape(v) for v in values)
        if op == "Exists":
            out.append({"action": "keep", "source_labels": [present + k], "regex": "true"})
        elif op == "DoesNotExist":
            out.append({"action": "drop", "source_labels": [present + k], "regex": "true"})
        elif op == "In":
            out.append({"action": "keep", "source_labels": [label + k, present + k],
                        "regex": f"({alternatives});true"})
        elif op == "NotIn":
            out.append({"action": "drop", "source_labels": [label + k, present + k],
                        "regex": f"({alternatives});true"})
        else:
            sys.exit(f"selector operator {op} not translated")
    return out


def namespaces(monitor):
    sel = monitor["spec"].get("namespaceSelector") or {}
    if sel.get("any"):
        return None
    return sel.get("matchNames") or [monitor["metadata"]["namespace"]]


def scrape_job(monitor, index, endpoint, kubeconfig):
    kind, meta, spec = monitor["kind"], monitor["metadata"], monitor["spec"]
    unknown = (set(spec) - SPEC_FIELDS[kind]) | (set(endpoint) - ENDPOINT_FIELDS)
    if unknown:
        sys.exit(f"{kind} {meta['name']}: fields not translated: {', '.join(sorted(unknown))}")
    role = "endpoints" if kind == "ServiceMonitor" else "pod"
    sd = {"role": role, "kubeconfig_file": kubeconfig}
    names = namespaces(monitor)
    if names is not None:
        sd["namespaces"] = {"names": names}
    relabel = []
    if kind == "ServiceMonitor":
        relabel += selector_relabels(spec.get("selector") or {}, "service")
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
             "regex": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
        ]
        if spec.get("jobLabel"):
            relabel.append({"source_labels": [f"__meta_kubernetes_service_label_{sanitize(spec['jobLabel'])}"],
                            "regex": "(.+)", "target_label": "job"})
        job_name = f"serviceMonitor/{meta['namespace']}/{meta['name']}/{index}"
    else:
        relabel += selector_relabels(spec.get("selector") or {}, "pod")
        relabel += [
            {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
             "regex": "(Failed|Succeeded)"},
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
             "regex": endpoint["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        ]
        if spec.get("jobLabel"):
            relabel.append({"source_labels": [f"__meta_kubernetes_pod_label_{sanitize(spec['jobLabel'])}"],
                            "regex": "(.+)", "target_label": "job"})
        job_name = f"podMonitor/{meta['namespace']}/{meta['name']}/{index}"
    relabel.append({"target_label": "endpoint", "replacement": endpoint["port"]})
    relabel += relabelings(endpoint.get("relabelings"))
    job = {
        "job_name": job_name,
        "honor_labels": bool(endpoint.get("honorLabels", False)),
        "metrics_path": endpoint.get("path", "/metrics"),
        "scheme": endpoint.get("scheme", "http"),
        "kubernetes_sd_configs": [sd],
        "relabel_configs": relabel,
    }
    if endpoint.get("interval"):
        job["scrape_interval"] = endpoint["interval"]
    if endpoint.get("scrapeTimeout"):
        job["scrape_timeout"] = endpoint["scrapeTimeout"]
    if endpoint.get("metricRelabelings"):
        job["metric_relabel_configs"] = relabelings(endpoint["metricRelabelings"])
    return job


def config(rendered, kubeconfig, out_dir, evaluation_interval):
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    jobs, rules = [], None
    for d in docs:
        if d["kind"] == "ServiceMonitor":
            jobs += [scrape_job(d, i, e, kubeconfig) for i, e in enumerate(d["spec"]["endpoints"])]
        elif d["kind"] == "PodMonitor":
            jobs += [scrape_job(d, i, e, kubeconfig)
                     for i, e in enumerate(d["spec"]["podMetricsEndpoints"])]
        elif d["kind"] == "PrometheusRule":
            rules = d["spec"]
    kinds = {d["kind"] for d in docs}
    missing = {"ServiceMonitor", "PodMonitor", "PrometheusRule"} - kinds
    if missing:
        sys.exit(f"{rendered}: no {', '.join(sorted(missing))}")
    prom = {
        # A job's scrape_timeout defaults to the global one, capped at its interval.
        "global": {"evaluation_interval": evaluation_interval,
                   "scrape_interval": evaluation_interval},
        "rule_files": ["rules.yml"],
        "scrape_configs": jobs,
    }
    with open(f"{out_dir}/prometheus.yml", "w") as f:
        yaml.safe_dump(prom, f, sort_keys=False)
    with open(f"{out_dir}/rules.yml", "w") as f:
        yaml.safe_dump(rules, f, sort_keys=False)
    print(f"{len(jobs)} scrape jobs ({', '.join(j['job_name'] for j in jobs)}), "
          f"{sum(len(g['rules']) for g in rules['groups'])} rules")


def api(url, path, params):
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params, doseq=True)}",
                                timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(body.get("error", body))
    return body["data"]


def substitute(expr, variables, rate_interval):
    """Template variables as Grafana fills them: 'All' gives the variable's allValue."""
    expr = expr.replace("$__rate_interval", rate_interval)
    for name, value in variables.items():
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def check(url, dashboard_path, start, scrape_seconds, expect, alerts):
    dash = json.load(open(dashboard_path))
    failed = 0

    def report(ok, text):
        nonlocal failed
        print(f"  {'ok  ' if ok else 'FAIL'}  {text}")
        failed += 0 if ok else 1

    end = time.time()
    # Grafana: step from the time range and the panel's max data points; the
    # $__rate_interval is max($__interval + scrape interval, 4 × scrape interval).
    step = max(scrape_seconds, math.ceil((end - start) / 1000))
    rate_interval = f"{max(step + scrape_seconds, 4 * scrape_seconds)}s"
    variables = {}
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
        if not m:
            report(False, f"variable ${var['name']}: query {q!r} not understood")
            continue
        match, label = substitute(m.group(1), variables, rate_interval), m.group(2)
        values = api(url, f"/api/v1/label/{label}/values",
                     {"match[]": match, "start": start, "end": end})
        want = set(expect.get(var["name"], []))
        report(bool(values) and want <= set(values),
               f"dashboard variable ${var['name']} lists {', '.join(values) or 'nothing'}"
               + (f" (expected {', '.join(sorted(want))})" if want - set(values) else ""))
        variables[var["name"]] = var.get("allValue") or "|".join(re.escape(v) for v in values)
    for p in panels(dash):
        for t in p.get("targets", []):
            expr = substitute(t["expr"], variables, rate_interval)
            name = f"panel \"{p['title']}\" ({t.get('legendFormat') or t.get('refId')})"
            try:
                series = api(url, "/api/v1/query_range",
                             {"query": expr, "start": start, "end": end, "step": step})["result"]
            except Exception as e:  # noqa: BLE001 - the query's error is the report
                report(False, f"{name}: {expr}: {e}")
                continue
            # A series of NaN only (a quantile of no observations) draws nothing.
            drawn = [s for s in series if any(v != "NaN" for _, v in s["values"])]
            report(bool(drawn), f"{name}: {len(drawn)} series" + ("" if drawn else f" from {expr}"))
    deadline = time.time() + 60
    waiting = list(alerts)
    while waiting and time.time() < deadline:
        firing = {a["labels"]["alertname"] for a in api(url, "/api/v1/alerts", {})["alerts"]
                  if a["state"] == "firing"}
        for a in [a for a in waiting if a in firing]:
            report(True, f"alert {a} is firing")
            waiting.remove(a)
        if waiting:
            time.sleep(1)
    for a in waiting:
        report(False, f"alert {a} is not firing")
    others = sorted({a["labels"]["alertname"] for a in api(url, "/api/v1/alerts", {})["alerts"]}
                    - set(alerts))
    if others:
        print(f"        (also pending or firing: {', '.join(others)})")
    return failed


def main():
    if len(sys.argv) >= 6 and sys.argv[1] == "config":
        config(*sys.argv[2:6])
        return
    if len(sys.argv) < 2 or sys.argv[1] != "check":
        sys.exit(__doc__)
    p = argparse.ArgumentParser(prog="prometheus.py check")
    p.add_argument("url")
    p.add_argument("dashboard")
    p.add_argument("start", type=float)
    p.add_argument("scrape_seconds", type=int)
    p.add_argument("--expect", action="append", default=[])
    p.add_argument("--alert", action="append", default=[])
    a = p.parse_args(sys.argv[2:])
    expect = {}
    for e in a.expect:
        name, _, values = e.partition("=")
        expect[name] = [v for v in values.split(",") if v]
    sys.exit(1 if check(a.url, a.dashboard, a.start, a.scrape_seconds, expect, a.alert) else 0)


if __name__ == "__main__":
    main()

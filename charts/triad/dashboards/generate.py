#!/usr/bin/env python3
"""Generates charts/triad/dashboards/triad.json (the Grafana dashboard).

The JSON is checked in; edit this script and run it (`python3 charts/triad/dashboards/generate.py`)
rather than editing the JSON, so panels stay consistent. make lint checks the JSON is
valid and that every metric it uses is exported by Triad.
"""
import json
import os

DS = {"type": "prometheus", "uid": "${datasource}"}
NSQ = 'namespace=~"$namespace"'
QQ = 'namespace=~"$namespace", queue=~"$queue"'

panels = []
y = 0
pid = 0


def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1


def ts(title, targets, x, w=8, h=8, unit="short", desc="", stack=False, kind="timeseries"):
    global pid
    pid += 1
    p = {
        "type": kind, "title": title, "id": pid, "datasource": DS, "description": desc,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                    for i, (e, l) in enumerate(targets)],
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                                                   "stacking": {"mode": "normal" if stack else "none"}}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    panels.append(p)


def advance(h=8):
    global y
    y += h


def q(metric, le="le", by=""):
    return f'histogram_quantile({le}, sum by (le{by}) (rate({metric}_bucket[$__rate_interval])))'


row("Queues")
ts("Queued items", [(f'sum(triad_queue_items{{{QQ}, phase="Queued"}})', "queued"),
                    (f'sum(triad_queue_items{{{QQ}, phase="Running"}})', "running"),
                    (f'sum(triad_queue_items{{{QQ}, phase="DeadLettered"}})', "dead-lettered"),
                    (f'max(triad_queue_oldest_queued_seconds{{{QQ}}})', "oldest queued (s)")],
   0, w=24, h=4, kind="stat")
advance(4)
ts("Queue depth by queue and phase",
   [(f'sum by (namespace, queue, phase) (triad_queue_items{{{QQ}, phase=~"Pending|Queued|Running|Backoff|Held"}})',
     "{{namespace}}/{{queue}} {{phase}}")], 0, w=12, stack=True,
   desc="WorkItems per queue in the non-terminal phases (from the scheduler's counters).")
ts("Oldest queued item age", [(f'max by (namespace, queue) (triad_queue_oldest_queued_seconds{{{QQ}}})',
                               "{{namespace}}/{{queue}}")], 12, w=12, unit="s",
   desc="How long the longest-waiting Queued item of each queue has waited. Alert: TriadQueueOldestItemTooOld.")
advance()
ts("Dead-lettered items", [(f'sum by (namespace, queue) (triad_queue_items{{{QQ}, phase="DeadLettered"}})',
                            "{{namespace}}/{{queue}}")], 0, w=12,
   desc="Items that ran out of attempts or passed their deadline; redrive with the triad.dev/redrive annotation.")
ts("Finished items by phase", [(f'sum by (phase) (triad_queue_items{{{QQ}, phase=~"Succeeded|Failed|Cancelled"}})',
                                "{{phase}}")], 12, w=12, stack=True)
advance()

row("Throughput and outcomes")
ts("Scheduler decisions / s", [('sum by (decision) (rate(triad_scheduler_decisions_total[$__rate_interval]))',
                                "{{decision}}")], 0, unit="ops",
   desc="admitted, retried, dead_lettered, failed, cancelled, escalated, redriven, write conflicts.")
ts("Agent outcomes / s", [('sum by (outcome) (rate(triad_agent_items_total[$__rate_interval]))', "{{outcome}}")],
   8, unit="ops", desc="How attempts ended, as the agents report them (Succeeded is the throughput).")
ts("Work duration", [(q("triad_agent_work_duration_seconds", "0.5"), "p50"),
                     (q("triad_agent_work_duration_seconds", "0.95"), "p95")], 16, unit="s")
advance()
ts("Claim latency", [(q("triad_agent_claim_latency_seconds", "0.5"), "p50"),
                     (q("triad_agent_claim_latency_seconds", "0.95"), "p95"),
                     (q("triad_agent_claim_latency_seconds", "0.99"), "p99")], 0, unit="s",
   desc="From an item first seen claimable by an agent to its claim.")
ts("Admission latency", [(q("triad_admission_latency_seconds", "0.5"), "p50"),
                         (q("triad_admission_latency_seconds", "0.95"), "p95")], 8, unit="s",
   desc="From creation to Queued, for items the scheduler admits (fast-path items are claimable as created).")
ts("Claim conflicts", [('sum(rate(triad_agent_claim_conflicts_total[$__rate_interval])) / '
                        'clamp_min(sum(rate(triad_agent_claim_attempts_total[$__rate_interval])), 1e-9)',
                        "conflicts / attempts")], 16, unit="percentunit",
   desc="Share of claims lost to another agent (409). High values mean agents race for the same heads.")
advance()

row("Agents")
ts("Agents by state per pool", [(f'sum by (namespace, pool, state) (triad_pool_agents{{{NSQ}}})',
                                 "{{namespace}}/{{pool}} {{state}}")], 0, w=12,
   desc="desired (what the pool wants), ready, busy (holding a Running item), idle.")
ts("Busy agents", [('sum(triad_agent_busy)', "busy"),
                   ('sum(rate(triad_agent_lease_renew_failures_total[$__rate_interval]))', "lease renew failures / s"),
                   ('sum(rate(triad_agent_report_lines_rejected_total[$__rate_interval]))', "report lines rejected / s")],
   12, w=12)
advance()

row("Supervision")
ts("Stalls", [('sum by (action) (increase(triad_interventions_total{monitor="progress"}[$__rate_interval]))',
               "{{action}}")], 0, desc="Interventions of the progress monitor (items that stopped making progress).")
ts("Budget burn", [('sum by (action) (increase(triad_interventions_total{monitor="budget"}[$__rate_interval]))',
                    "{{action}}")], 8,
   desc="Budget warnings, cuts, extensions and escalations. Alert: TriadBudgetBurnHigh.")
ts("Violations", [('sum by (action) (increase(triad_interventions_total{monitor="violation"}[$__rate_interval]))',
                   "{{action}}")], 16, desc="Policy violations reported by work commands, and what the supervisor did.")
advance()
ts("Interventions by monitor and action",
   [('sum by (monitor, action) (increase(triad_interventions_total[$__rate_interval]))', "{{monitor}} {{action}}")],
   0, stack=True)
ts("Fault to intervention", [(q("triad_fault_to_intervention_seconds", "0.5"), "p50"),
                             (q("triad_fault_to_intervention_seconds", "0.95"), "p95")], 8, unit="s",
   desc="From a fault the supervisor can date (last lease renewal seen, start of a stall) to its intervention.")
ts("Supervised running items", [('max(triad_supervised_items)', "running")], 16)
advance()

row("Controllers")
ts("Leaders", [('max by (role) (triad_leader)', "{{role}}"),
               ('sum by (role) (triad_leader)', "{{role}} (leaders counted)")], 0,
   desc="1 while some replica leads the role. Alert: TriadNoLeader.")
ts("Reconcile duration p95", [(q("triad_reconcile_duration_seconds", "0.95", ", controller"), "{{controller}}")],
   8, unit="s")
ts("Reconcile errors / s", [('sum by (controller) (rate(triad_reconcile_errors_total[$__rate_interval]))',
                             "{{controller}}")], 16, unit="ops")
advance()
ts("Build", [('count by (version) (triad_build_info)', "{{version}}")], 0, w=24, h=3, kind="stat")
advance(3)

dashboard = {
    "title": "Triad",
    "uid": "triad-overview",
    "description": "Triad: queues, throughput, agents, supervision and controllers.",
    "tags": ["triad", "kubernetes", "queues"],
    "editable": True,
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-1h", "to": "now"},
    "refresh": "30s",
    "timezone": "browser",
    "graphTooltip": 1,
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {}, "hide": 0},
        {"name": "namespace", "type": "query", "datasource": DS, "label": "Namespace",
         "query": {"query": "label_values(triad_queue_items, namespace)", "refId": "ns"},
         "definition": "label_values(triad_queue_items, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0},
        {"name": "queue", "type": "query", "datasource": DS, "label": "Queue",
         "query": {"query": 'label_values(triad_queue_items{namespace=~"$namespace"}, queue)', "refId": "q"},
         "definition": 'label_values(triad_queue_items{namespace=~"$namespace"}, queue)',
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triad.json")
with open(out, "w") as f:
    json.dump(dashboard, f, indent=2)
    f.write("\n")
